"""The machine and the code a run measured, for the report's header."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import platform
import subprocess
import sys
from pathlib import Path

import psutil

from bench.results import Machine
from zapflow.platform.servers import find_nats_server, find_redis_server

ROOT = Path(__file__).resolve().parent.parent


def _output(command: list[str]) -> str:
    with contextlib.suppress(Exception):
        return subprocess.run(command, capture_output=True, text=True, timeout=10, cwd=ROOT, check=False).stdout
    return ""


def describe() -> Machine:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = _output(["git", "rev-parse", "--short", "HEAD"]).strip()
    diff = _output(["git", "diff", "HEAD", "--", "services"])
    # Uncommitted changes are named by a hash of their diff, so results map to exact code.
    diff_id = hashlib.sha1(diff.encode()).hexdigest()[:8]  # noqa: S324 - an identifier, not security
    redis_version = _output([find_redis_server(), "--version"]).split()
    return Machine(
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        cpu=cpu,
        cores=psutil.cpu_count(),
        memory_gib=round(psutil.virtual_memory().total / 2**30),
        os=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        nats_server=(_output([find_nats_server(), "--version"]).split() or ["?"])[-1],
        redis_server=next((w.split("=", 1)[1] for w in redis_version if w.startswith("v=")), "?"),
        commit=commit + (f"+uncommitted services changes (diff {diff_id})" if diff.strip() else ""),
        command="uv run python bench/run.py " + " ".join(sys.argv[1:]),
    )
