"""zapflow benchmark: raw JetStream baseline, webhook ingress, end to end, resources.

    uv run python bench/run.py            # full run (about 3 minutes)
    uv run python bench/run.py --quick    # 5-second smoke version
    uv run python bench/run.py --phase knowledge   # the embedding service (bench/phases/knowledge.py)

Starts its own nats-server, redis-server, sandbox, gateway and conversation service(s) on free
loopback ports, in a temporary directory, and stops every one of them on exit (Ctrl-C too).
Prints a markdown report with PASS/FAIL per target and writes it as JSON to
bench/results/latest.json. bench/README.md explains the method; docs/benchmark.md keeps the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/run.py` puts bench/, not the repo root, on the path
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench import machine, render, targets  # noqa: E402
from bench.harness import Harness, Profiler  # noqa: E402
from bench.options import Options, parse_options  # noqa: E402
from bench.phases import knowledge  # noqa: E402
from bench.results import BenchReport  # noqa: E402
from bench.session import run_phases  # noqa: E402
from bench.stack import BenchError, Ports, ResourceMonitor, Stack  # noqa: E402


def _terminate(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def measure(options: Options, harness: Harness) -> BenchReport:
    """Run every phase on the stack; the report of what they measured, with the verdicts."""
    meta = machine.describe()
    phases_run = run_phases(options, harness)
    try:
        import uvloop  # a dependency of uvicorn[standard]: the generator's event loop too
    except ImportError:
        phases = asyncio.run(phases_run)
    else:
        phases = uvloop.run(phases_run)
    harness.monitor.stop()
    return BenchReport(
        phases=phases,
        profiles=harness.profiler.summaries,
        meta=meta,
        config=options,
        peak_rss_mib={name: round(rss / 2**20, 1) for name, rss in harness.monitor.peak_rss.items()},
        targets=targets.TARGETS,
        verdicts=targets.evaluate(phases),
    )


def requested_phase(argv: list[str] | None) -> str | None:
    """The --phase asked for, read before the options: the knowledge phase has options of its own."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--phase")
    return parser.parse_known_args(argv)[0].phase


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C must stop the run and clean up even when started from a shell that ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    if requested_phase(argv) == knowledge.NAME:  # its own stack, options and report
        return knowledge.main(argv)
    options = parse_options(argv, description=__doc__)
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="zapflow-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stack: Stack | None = None
    profiler: Profiler | None = None
    monitor: ResourceMonitor | None = None
    try:
        stack = Stack(workdir, Ports.choose(options.base_port, options.conversation_replicas))
        monitor = ResourceMonitor(stack)
        profiler = Profiler(options.py_spy, options.py_spy_rate, options.py_spy_nonblocking)
        report = measure(options, Harness(stack, monitor, profiler))
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps(report.as_json(), indent=2) + "\n")
        print(render.markdown(report))
        print(f"JSON report: {options.json}")
        return 1 if report.failed else 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process ...", file=sys.stderr)
        return 130
    except BenchError as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 2
    finally:
        if profiler is not None:
            profiler.stop()
        if monitor is not None:
            monitor.stop()
        if stack is not None:
            stack.stop()
            leftovers = [p.name for p in stack.procs.values() if p.exited() is None]
            if leftovers:
                print(f"warning: still running: {leftovers}", file=sys.stderr)
        if options.keep or options.workdir:
            print(f"work dir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        # Any stray child of ours (none expected) goes with us.
        for child in psutil.Process(os.getpid()).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()


if __name__ == "__main__":
    sys.exit(main())
