"""Run the `zapflow` command as a user does: a separate process, its output captured."""

from __future__ import annotations

import subprocess
import sys


def run_zapflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zapflow", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
