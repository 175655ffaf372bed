"""Phase 2: webhook ingress, open loop, without the conversation service.

The webhook path ends at the JetStream ack, and nothing downstream competes for the cores. A 200
means the message is in JetStream (I1), so the inbound stream must gain one message per webhook
accepted.
"""

from __future__ import annotations

from nats.js import JetStreamContext

from bench import loadgen
from bench.figures import webhook_figures
from bench.harness import Harness
from bench.options import Options
from bench.results import IngressResult
from bench.workload import Workload
from zapflow.platform import catalogue

NAME = "ingress"


async def measure(harness: Harness, js: JetStreamContext, workload: Workload, options: Options) -> IngressResult:
    count = int(options.rate * options.duration)
    signed = workload.webhooks(count, options.contacts, "55110")
    before = await inbound_messages(js)
    print(f"[2/4] ingress: {count} signed webhooks at {options.rate:.0f}/s over {options.connections} connections ...",
          flush=True)  # fmt: skip
    harness.begin(NAME, profile_for_s=options.duration)
    load = loadgen.open_loop("127.0.0.1", workload.gateway_port, signed.requests, options.rate, options.connections)
    sent = await harness.guarded(load)
    resources = harness.end()
    result = IngressResult(
        webhooks=webhook_figures(sent, options.duration, options.rate),
        resources=resources,
        duration_s=options.duration,
        conversation_running=False,
        persisted_in_jetstream=await inbound_messages(js) - before,
    )
    latency = result.webhooks.latency_from_schedule
    print(f"      {result.webhooks.accepted}/{count} accepted, {result.webhooks.throughput_per_s:.0f}/s, "
          f"p50 {latency.p50_ms} ms, p99 {latency.p99_ms} ms", flush=True)  # fmt: skip
    return result


async def inbound_messages(js: JetStreamContext) -> int:
    info = await js.stream_info(catalogue.INBOUND.name)
    return int(info.state.messages)
