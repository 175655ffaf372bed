"""Micro-benchmark: how long a message waits inside `PullSubscription.fetch(batch, timeout)`.

    uv run python bench/fetch_latency.py [--rate 350] [--seconds 5]

zapflow's consumers (platform/bus.py `Consumer._run`) call `fetch(batch, timeout=1.0)` in a loop.
When the consumer is caught up, nats-py keeps a fetch open until the *whole batch* arrived or
the timeout passed, so a message published into an idle consumer waits for the batch to fill
(batch / rate seconds) or for the timeout. This script publishes at a steady rate into a file
stream and measures publish -> handed-to-the-application for a few fetch strategies, on its own
nats-server on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
from nats.js import api  # noqa: E402

from bench.accounting import summarise  # noqa: E402
from zapflow.platform import servers  # noqa: E402
from zapflow.platform.supervisor import Supervised  # noqa: E402

Fetcher = Callable[[Any], Awaitable[list[Any]]]


def strategies(batch: int) -> dict[str, Fetcher]:
    async def as_zapflow(sub: Any) -> list[Any]:
        return list(await sub.fetch(batch, timeout=1.0))

    async def short_timeout(sub: Any) -> list[Any]:
        return list(await sub.fetch(batch, timeout=0.02))

    async def one_then_drain(sub: Any) -> list[Any]:
        """Long-poll for one message, then take what is already there without waiting."""
        first = list(await sub.fetch(1, timeout=1.0))
        with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):
            first += await sub.fetch(batch - 1, timeout=0.002)
        return first

    return {
        f"fetch({batch}, timeout=1.0) as zapflow": as_zapflow,
        f"fetch({batch}, timeout=0.02)": short_timeout,
        f"fetch(1, timeout=1.0) then fetch({batch - 1}, timeout=0.002)": one_then_drain,
    }


async def measure(url: str, name: str, fetch: Fetcher, rate: float, seconds: float) -> dict[str, Any]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    stream = "FETCHLAT"
    with contextlib.suppress(Exception):
        await js.delete_stream(stream)
    await js.add_stream(api.StreamConfig(name=stream, subjects=["fetchlat.>"], storage=api.StorageType.FILE))
    sub = await js.pull_subscribe("fetchlat.>", durable="lat", stream=stream)
    count = int(rate * seconds)
    waits: list[float] = []
    done = asyncio.Event()

    async def consume() -> None:
        received = 0
        while received < count:
            try:
                msgs = await fetch(sub)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            now = time.time()
            for msg in msgs:
                waits.append(now - float(msg.data.decode()))
                await msg.ack()
            received += len(msgs)
        done.set()

    consumer = asyncio.create_task(consume())
    start = time.perf_counter()
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        await js.publish(f"fetchlat.c{i % 500}", str(time.time()).encode())
    await asyncio.wait_for(done.wait(), timeout=30)
    await consumer
    await js.delete_stream(stream)
    await nc.close()
    return {"strategy": name, **summarise(waits)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=350)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zapflow-fetchlat-") as store:
        server = Supervised(servers.nats_server("nats", servers.ANY_PORT, Path(store), Path(store) / "nats.log"))
        server.start()  # once, before anything is measured
        try:
            url = f"nats://127.0.0.1:{servers.nats_port(Path(store), server.pid)}"
            print(f"publish -> fetched, {args.rate:.0f} msg/s for {args.seconds:.0f} s, batch {args.batch} (ms)")
            print("| strategy | count | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|")
            for name, fetch in strategies(args.batch).items():
                s = await measure(url, name, fetch, args.rate, args.seconds)
                print(f"| {name} | {s['count']} | {s['p50_ms']} | {s['p90_ms']} | {s['p99_ms']} | {s['max_ms']} |")
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
