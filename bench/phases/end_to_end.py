"""Phase 3: end to end, webhooks in and replies out through the conversation service(s).

Every message is its own turn (a contact writes again only CONTACT_GAP_S later). After the last
webhook the bench waits, bounded, until the system is idle, then accounts for every message: in
exactly one turn, every turn sent exactly once.
"""

from __future__ import annotations

import asyncio
import math
import time

from nats.js import JetStreamContext

from bench import loadgen
from bench.figures import drain_rate, turn_figures
from bench.harness import Harness
from bench.options import Options
from bench.phases import records
from bench.results import EndToEndResult
from bench.workload import CONTACT_GAP_S, DEBOUNCE, Workload
from zapflow.platform import catalogue

NAME = "e2e"
DRAIN = "e2e_drain"


async def measure(harness: Harness, js: JetStreamContext, workload: Workload, options: Options) -> EndToEndResult:
    stack = harness.stack
    # The ingress phases' messages were never consumed: purge them so the conversation service
    # starts on an empty inbound stream and this phase measures only its own turns.
    await js.purge_stream(catalogue.INBOUND.name)
    stack.start_conversations(record=options.recorder)
    count = int(options.e2e_rate * options.e2e_duration)
    contacts = max(200, math.ceil(options.e2e_rate * CONTACT_GAP_S))
    signed = workload.webhooks(count, contacts, "55120")
    print(f"[3/4] end to end: {count} single-message turns at {options.e2e_rate:.0f}/s from {contacts} contacts, "
          f"{len(stack.ports.conversations)} conversation replica(s) ...", flush=True)  # fmt: skip

    harness.begin(NAME, profile_for_s=options.e2e_duration)
    stop_sampling = asyncio.Event()
    sampler = asyncio.create_task(records.sample_backlogs(js, stack.redis_url, stop_sampling, options.recorder))
    load = loadgen.open_loop(
        "127.0.0.1", workload.gateway_port, signed.requests, options.e2e_rate, options.e2e_connections
    )
    sent = await harness.guarded(load)
    stop_sampling.set()
    backlogs = await sampler
    resources = harness.end()

    sent_at = time.monotonic()
    accepted = [signed.wamids[i] for i in sent.ok_indexes]
    maybe = [signed.wamids[i] for i, status in enumerate(sent.status) if status != 200]
    harness.begin(DRAIN, profile_for_s=options.settle_timeout)
    turns, sends, checked = await records.settle(js, stack, accepted, maybe, options.settle_timeout)
    recorder = await records.recorder_catch_up(js, stack, sent_at, options.settle_timeout) if options.recorder else None
    drain_resources = harness.end(interrupt_profiler=True)

    result = EndToEndResult(
        figures=turn_figures(sent, signed.wamids, turns, checked, options.e2e_duration, options.e2e_rate),
        egress_while_draining=drain_rate(sent, sends),
        backlogs_while_sending=backlogs,
        recorder=recorder,
        contacts=contacts,
        conversation_replicas=len(stack.ports.conversations),
        debounce=DEBOUNCE,
        settle_s=round(time.monotonic() - sent_at, 1),
        resources=resources,
        drain_resources=drain_resources,
    )
    latency = result.figures.turn_latency
    print(f"      {result.figures.turns} turns, {result.figures.turns_per_s:.0f}/s, turn p50 {latency.p50_ms} ms, "
          f"p99 {latency.p99_ms} ms, accounting {'OK' if checked.ok else 'FAILED'}", flush=True)  # fmt: skip
    return result
