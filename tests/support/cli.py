"""Run the `zapflow` command as a user does: a separate process, its output captured."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from zapflow.platform import bus, catalogue
from zapflow.platform.servers import zapflow_command


def cli_environment(**variables: str) -> dict[str, str]:
    """This environment without its ZAPFLOW_* variables, plus `variables`: the command sees what the test sets.

    COLUMNS is wide so that rich prints each message and table row as the one line it is.
    """
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("ZAPFLOW_")}
    return {**inherited, "COLUMNS": "1000", **variables}


def run_zapflow(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        zapflow_command(*args),
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def declare_streams(nats_url: str) -> None:
    """Create zapflow's streams, as its services do when they start: an erasure refuses a NATS without them."""
    nc = await bus.connect_once(nats_url, "zapflow-tests")
    try:
        await bus.ensure_streams(nc.jetstream(), catalogue.ALL_STREAMS)
    finally:
        await nc.close()
