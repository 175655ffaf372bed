"""What a phase measures with: the stack under test, its resource monitor and the optional profiler."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bench import profile
from bench.results import PhaseResources
from bench.stack import BenchError, ResourceMonitor, Stack

T = TypeVar("T")


class Profiler:
    """py-spy on chosen processes during a phase (only with --py-spy)."""

    def __init__(self, out_dir: Path | None, rate: int, nonblocking: bool = False) -> None:
        self.out_dir = out_dir
        self.rate = rate
        self.nonblocking = nonblocking
        self.binary = profile.find_py_spy() if out_dir else None
        if out_dir and not self.binary:
            raise BenchError("--py-spy needs py-spy in the venv: uv pip install py-spy")
        self._running: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
        self.summaries: dict[str, Any] = {}

    def begin(self, phase: str, stack: Stack, duration_s: float) -> None:
        if not self.out_dir or not self.binary:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, proc in stack.procs.items():
            if name in ("gateway", "sandbox") or name.startswith("conversation"):
                out = self.out_dir / f"{phase}-{name}.txt"
                spy = profile.start(self.binary, proc.pid, out, duration_s, self.rate, self.nonblocking)
                self._running.append((f"{phase}/{name}", out, spy))

    def end(self, interrupt: bool = False) -> None:
        """Collect the profiles; `interrupt` stops py-spy now (it writes what it has on SIGINT)."""
        for key, out, popen in self._running:
            if interrupt and popen.poll() is None:
                popen.send_signal(signal.SIGINT)
            try:
                popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
            if out.exists():
                self.summaries[key] = profile.summarise(out)
            else:
                error = popen.stderr.read().decode(errors="replace")[-500:] if popen.stderr else ""
                self.summaries[key] = {"error": error or "no output"}
        self._running.clear()

    def stop(self) -> None:
        for _, _, popen in self._running:
            if popen.poll() is None:
                popen.kill()
                popen.wait()


@dataclass
class Harness:
    stack: Stack
    monitor: ResourceMonitor
    profiler: Profiler

    def begin(self, phase: str, profile_for_s: float | None = None) -> None:
        """Start measuring the resources of `phase`, and profile it for a while when asked to."""
        self.monitor.begin(phase)
        if profile_for_s is not None:
            self.profiler.begin(phase, self.stack, profile_for_s)

    def end(self, interrupt_profiler: bool = False) -> PhaseResources:
        """The resources of the phase begun last; its profiles are collected first."""
        self.profiler.end(interrupt=interrupt_profiler)
        return PhaseResources.from_monitor(self.monitor.end())

    async def guarded(self, work: Coroutine[Any, Any, T]) -> T:
        """Await `work`, failing at once (with the process's log) if any process of the stack dies."""
        task = asyncio.ensure_future(work)
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return task.result()
            try:
                self.stack.check_alive()
            except BenchError:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                raise
