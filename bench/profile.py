"""py-spy profiles of the services during a phase, summarised from collapsed ("raw") stacks.

Optional (`--py-spy DIR`): py-spy is not a project dependency. Install it into the venv for a
profiling run only: `uv pip install py-spy`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start(
    py_spy: str, pid: int, out: Path, duration_s: float, rate: int, nonblocking: bool = False
) -> subprocess.Popen[bytes]:
    """Sample `pid` for `duration_s`, collapsed stacks to `out`.

    --gil keeps only the samples of the thread holding the GIL: where the process spends its
    CPU in Python (and in C called from Python, e.g. uvloop's callbacks or a socket write), not
    threads waiting. By default py-spy pauses the process for each sample (exact stacks); with
    `nonblocking` it does not (lower overhead, but many torn stacks under load).
    """
    return subprocess.Popen(
        [
            py_spy, "record", "--pid", str(pid), "--duration", str(max(1, int(duration_s))),
            "--rate", str(rate), "--format", "raw", "--gil", "--output", str(out),
            *(["--nonblocking"] if nonblocking else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip


def _frame(frame: str) -> str:
    """'function (path/to/file.py:123)' -> 'function (file.py)': lines merged, paths shortened."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "services/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def summarise(collapsed: Path, top: int = 15) -> dict[str, Any]:
    """Top frames by self and by inclusive share of the samples (GIL-holding samples only)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"frame": f, "pct": round(100 * n / total, 1)} for f, n in counter.most_common(top)] if total else []

    return {"samples": total, "self": share(own), "inclusive": share(inclusive)}
