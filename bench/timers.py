"""Benchmark: durable timers on nats-server's message schedules (services/zapflow/scheduler/timers.py).

    uv run python bench/timers.py [--timers 10000] [--spread 10] [--concurrency 64] [--json PATH]

Starts its own nats-server and redis-server on free loopback ports in a temporary directory, as
`zapflow dev` runs them (JetStream on file storage; Redis with its append-only file fsynced every
second), and measures, in one process that uses zapflow's own code:

1. **scheduled/s**: `--timers` timers due in an hour, scheduled with `Timers.schedule`,
   `--concurrency` calls at a time (each is a publish and a direct get); then purged.
2. **fired/s and lateness**: `--timers` timers due evenly over `--spread` seconds (10,000 over 10 s:
   1,000 due per second), the first due once all are scheduled. The scheduler's consumer (the
   platform's `Consumer` over `Timers.handle`, as the service runs it) handles them; its handler
   only notes the timer. Lateness is when the handler started minus the due time; the server's
   share is when nats-server stored the fired message minus the due time. The CPU is this
   process's while it handled them.

Prints JSON, then a markdown table. docs/benchmark.md keeps the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/timers.py` puts bench/, not the repo root, on the path
    sys.path.insert(0, str(ROOT))

from nats.aio.msg import Msg  # noqa: E402

from bench.accounting import percentile  # noqa: E402
from zapflow.platform import bus, catalogue, servers  # noqa: E402
from zapflow.platform.redis import connect_redis  # noqa: E402
from zapflow.platform.supervisor import Supervised  # noqa: E402
from zapflow.scheduler.timers import Fired, LatePolicy, Timers  # noqa: E402
from zapflow.v1.timer_pb2 import Timer  # noqa: E402

TENANT = "bench"
WAITING = "far"  # the kind of phase 1's timers, due in an hour
DUE = "due"  # the kind of phase 2's timers
# Between the last schedule call and the first due time, so the phases do not overlap.
MARGIN_S = 1.0


def distribution(seconds: list[float]) -> dict[str, float | int | None]:
    values = sorted(seconds)
    if not values:
        return {"count": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "count": len(values),
        **{f"p{rank}_ms": round(percentile(values, rank) * 1000, 2) for rank in (50, 95, 99)},
        "max_ms": round(values[-1] * 1000, 2),
    }


async def schedule_all(timers: Timers, kind: str, due_times: list[datetime], concurrency: int) -> float:
    """Schedule one timer per due time, `concurrency` calls at a time; the seconds it took."""
    pending = iter(enumerate(due_times))

    async def worker() -> None:
        for index, due_at in pending:
            await timers.schedule(kind, TENANT, f"k{index}", due_at)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def measure(nats_url: str, redis_url: str, count: int, spread_s: float, concurrency: int) -> dict[str, Any]:
    nc = await bus.connect(nats_url, "bench-timers")
    redis = connect_redis(redis_url)
    js = nc.jetstream()
    await bus.ensure_stream(js, catalogue.TIMER_STREAM)
    timers = Timers(js, redis)
    try:
        in_an_hour = datetime.now(UTC) + timedelta(hours=1)
        scheduling_s = await schedule_all(timers, WAITING, [in_an_hour] * count, concurrency)
        await js.purge_stream(catalogue.TIMER_STREAM.name, subject=catalogue.timer_subject(WAITING, TENANT, "*"))

        lateness: list[float] = []
        stored_late: list[float] = []
        handled_at: list[float] = []
        everything_handled = asyncio.Event()

        cpu_at: list[float] = []

        async def note(fired: Fired) -> None:
            lateness.append(fired.lateness_s)
            handled_at.append(time.monotonic())
            if len(lateness) in (1, count):
                cpu_at.append(time.process_time())
            if len(lateness) == count:
                everything_handled.set()

        async def handle(timer: Timer, msg: Msg) -> None:
            due_at = timer.due_at.ToDatetime(tzinfo=UTC)
            stored_late.append((msg.metadata.timestamp - due_at).total_seconds())
            await timers.handle(timer, msg)

        timers.on(DUE, note, LatePolicy(max_lateness_s=None))
        consumer: bus.Consumer[Timer] = bus.Consumer(js, catalogue.TIMERS, Timer, handle)
        await consumer.start()
        try:
            first_due = datetime.now(UTC) + timedelta(seconds=scheduling_s * 1.5 + MARGIN_S)
            due_times = [first_due + timedelta(seconds=spread_s * index / count) for index in range(count)]
            await schedule_all(timers, DUE, due_times, concurrency)
            await asyncio.wait_for(everything_handled.wait(), timeout=spread_s + scheduling_s * 2 + 60)
        finally:
            await consumer.stop()
        firing_s = handled_at[-1] - handled_at[0]
        return {
            "timers": count,
            "spread_s": spread_s,
            "due_per_second": round(count / spread_s),
            "concurrency": concurrency,
            "scheduled_per_second": round(count / scheduling_s),
            "fired_per_second": round((count - 1) / firing_s) if firing_s > 0 else None,
            # This process while it handled them (one event loop: 100% is all it can do).
            "consumer_cpu_percent": round(100 * (cpu_at[-1] - cpu_at[0]) / firing_s) if firing_s > 0 else None,
            "lateness": distribution(lateness),
            "server_lateness": distribution(stored_late),
        }
    finally:
        await redis.aclose()
        await nc.close()


def table(result: dict[str, Any]) -> str:
    rows = [
        f"| scheduled per second ({result['concurrency']} calls at a time) | {result['scheduled_per_second']:,} |",
        f"| fired and handled per second ({result['due_per_second']:,} due) | {result['fired_per_second']:,} |",
    ]
    rows.append(f"| CPU of the consumer's process while firing (% of a core) | {result['consumer_cpu_percent']} |")
    for name, label in (("lateness", "due → handler"), ("server_lateness", "due → stored by nats-server")):
        spread = result[name]
        rows.append(
            f"| lateness, {label}: p50 / p95 / p99 / max (ms) | {spread['p50_ms']} / {spread['p95_ms']} / "
            f"{spread['p99_ms']} / {spread['max_ms']} |"
        )
    return "| timers: " + f"{result['timers']:,} | |\n|---|---|\n" + "\n".join(rows)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timers", type=int, default=10_000)
    parser.add_argument("--spread", type=float, default=10.0, help="seconds over which the timers are due")
    parser.add_argument("--concurrency", type=int, default=64, help="schedule calls in flight at once")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zapflow-bench-timers-") as directory:
        data = Path(directory)
        (data / "redis").mkdir()
        redis_port = servers.free_port()
        nats_server = Supervised(servers.nats_server("nats", servers.ANY_PORT, data / "nats", data / "nats.log"))
        redis_server = Supervised(
            servers.redis_server("redis", redis_port, data / "redis", data / "redis.log", durable=True)
        )
        nats_server.start()
        redis_server.start()
        try:
            nats_url = f"nats://127.0.0.1:{servers.nats_port(data / 'nats', nats_server.pid)}"
            result = await measure(
                nats_url, f"redis://127.0.0.1:{redis_port}/0", args.timers, args.spread, args.concurrency
            )
        finally:
            redis_server.stop()
            nats_server.stop()
    print(json.dumps(result, indent=2))
    print()
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
