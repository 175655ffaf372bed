"""Phase 1: the raw JetStream baseline, from Python, with only nats-server and redis-server running."""

from __future__ import annotations

import asyncio
import time

import nats
from nats.js import api

from bench.harness import Harness
from bench.results import JetStreamThroughput, RawJetStreamResult
from zapflow.v1 import inbound_pb2

NAME = "raw_jetstream"


async def measure(harness: Harness, count: int, run_id: str) -> RawJetStreamResult:
    print(f"[1/4] raw JetStream: {count} async publishes, then pull-consume + ack ...", flush=True)
    harness.begin(NAME)
    throughput = await harness.guarded(publish_then_consume(harness.stack.nats_url, count, run_id))
    result = RawJetStreamResult(throughput=throughput, resources=harness.end())
    print(f"      publish {throughput.publish_per_s:.0f}/s, consume+ack {throughput.consume_ack_per_s:.0f}/s",
          flush=True)  # fmt: skip
    return result


async def publish_then_consume(nats_url: str, count: int, run_id: str) -> JetStreamThroughput:
    """Async publishes with Nats-Msg-Id to a file stream, then pull-consume and ack them."""
    nc = await nats.connect(nats_url, name="bench-raw")
    try:
        js = nc.jetstream(publish_async_max_pending=4000)
        await js.add_stream(api.StreamConfig(name="BENCH_RAW", subjects=["bench.raw.>"], storage=api.StorageType.FILE))
        # A payload the size of a real InboundMessage, on a per-contact subject as zapflow does.
        sample = inbound_pb2.InboundMessage(
            wamid=f"wamid.BENCH{run_id}RAW00000000", tenant="bench-0", contact="5511900000000",
            phone_number_id="900000000000001", type="text",
        )  # fmt: skip
        sample.text.body = "hello 12345"
        payload = sample.SerializeToString() * 3
        subjects = [f"bench.raw.bench-{c % 4}.55119{c:08d}" for c in range(2000)]
        futures = []
        started = time.perf_counter()
        for i in range(count):
            headers = {"Nats-Msg-Id": f"raw-{run_id}-{i}"}
            futures.append(await js.publish_async(subjects[i % len(subjects)], payload, headers=headers))
        await asyncio.wait_for(js.publish_async_completed(), timeout=120)
        published_s = time.perf_counter() - started
        failed = sum(1 for f in futures if f.exception() is not None)
        duplicates = sum(1 for f in futures if f.exception() is None and f.result().duplicate)

        subscription = await js.pull_subscribe(
            "bench.raw.>", durable="bench-raw", stream="BENCH_RAW", config=api.ConsumerConfig(max_ack_pending=-1)
        )
        received = 0
        started = time.perf_counter()
        deadline = started + 120
        while received < count - failed and time.perf_counter() < deadline:
            try:
                batch = await subscription.fetch(512, timeout=2)
            except nats.errors.TimeoutError:
                continue
            for msg in batch:
                await msg.ack()
            received += len(batch)
        await nc.flush()
        consumed_s = time.perf_counter() - started
        await js.delete_stream("BENCH_RAW")
    finally:
        await nc.close()
    return JetStreamThroughput(
        messages=count,
        payload_bytes=len(payload),
        publish_failed=failed,
        publish_duplicates=duplicates,
        publish_per_s=round((count - failed) / published_s, 1),
        consumed=received,
        consume_ack_per_s=round(received / consumed_s, 1),
    )
