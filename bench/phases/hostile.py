"""The hostile phase: signed hostile webhook bodies through the running stack, then a real customer.

Issue #9's test: no body, however broken, gets an answer of 500 or more (the bus is up all
along, so not even a 503); the readable messages of a body answered 200 are in JetStream and a
message naming a tenant that did not sign never is; afterwards a real customer is still
answered. bench/hostile.py makes the bodies.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import psutil
from nats.js import JetStreamContext

from bench import hostile, loadgen
from bench.harness import Harness
from bench.options import Options
from bench.results import CustomerReply, HostileResult
from bench.stack import Stack
from bench.workload import Workload
from zapflow.gateway.settings import GatewaySettings
from zapflow.whatsapp.signature import SIGNATURE_HEADER, sign

NAME = "hostile"
CUSTOMER_PREFIX = "5516"
# The stack's gateway runs with the default limit (the bench sets no ZAPFLOW_GATEWAY_* variable).
MAX_BODY_BYTES = GatewaySettings.model_fields["max_body_bytes"].default


def tenants(workload: Workload) -> tuple[hostile.Tenant, ...]:
    return tuple(
        hostile.Tenant(
            name=document["metadata"]["name"],
            phone_number_id=document["spec"]["whatsapp"]["phoneNumberId"],
            app_secret=document["spec"]["whatsapp"]["appSecret"]["value"],
        )
        for document in workload.documents
    )


def gateway_rss_mib(stack: Stack) -> float:
    rss: int = psutil.Process(stack.procs["gateway"].pid).memory_info().rss
    return round(rss / 2**20, 1)


async def measure(harness: Harness, js: JetStreamContext, workload: Workload, options: Options) -> HostileResult:
    stack = harness.stack
    if not any(name.startswith("conversation") for name in stack.procs):
        stack.start_conversations(record=options.recorder)
    generator = hostile.HostileBodies(options.hostile_seed, tenants(workload), int(time.time()), MAX_BODY_BYTES)
    print(f"[hostile] {options.hostile_bodies} hostile webhook bodies (seed {options.hostile_seed}), "
          f"{options.hostile_concurrency} at a time ...", flush=True)  # fmt: skip
    rss_before = gateway_rss_mib(stack)
    limits = httpx.Limits(max_connections=options.hostile_concurrency)
    gateway_url = f"http://127.0.0.1:{stack.ports.gateway}"
    harness.begin(NAME)
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=gateway_url, timeout=60, limits=limits) as client:
        bodies = generator.bodies(options.hostile_bodies)
        sent = await harness.guarded(hostile.post_all(client, bodies, options.hostile_concurrency))
    duration = time.perf_counter() - started
    resources = harness.end()
    rss_after = gateway_rss_mib(stack)
    figures = hostile.tally(sent)
    parts = await hostile.check_parts(js, sent)
    customer = await harness.guarded(customer_answered(stack, workload, options.settle_timeout))
    result = HostileResult(
        figures=figures,
        parts=parts,
        customer=customer,
        seed=options.hostile_seed,
        concurrency=options.hostile_concurrency,
        max_body_bytes=MAX_BODY_BYTES,
        duration_s=round(duration, 1),
        bodies_per_s=round(len(sent) / duration, 1),
        gateway_rss_mib_before=rss_before,
        gateway_rss_mib_after=rss_after,
        resources=resources,
    )
    print(f"      answers {figures.statuses}, {figures.server_errors} >= 500, {figures.unanswered} unanswered; "
          f"customer {'answered' if customer.answered else 'NOT answered'}", flush=True)  # fmt: skip
    return result


async def customer_answered(stack: Stack, workload: Workload, timeout_s: float) -> CustomerReply:
    """A customer writes as Meta would deliver it; the bot's reply must reach the Graph API."""
    tenant = workload.documents[0]["spec"]["whatsapp"]
    contact = f"{CUSTOMER_PREFIX}{workload.run_id}000"
    wamid = f"wamid.BENCH{workload.run_id}CUSTOMER"
    body = loadgen.webhook_body(tenant["phoneNumberId"], contact, wamid, "what is the price?", int(time.time()))
    headers = {SIGNATURE_HEADER: sign(body, tenant["appSecret"]["value"]), "Content-Type": "application/json"}
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(stack.webhook_url, content=body, headers=headers)
        written = time.time()
        if answer.status_code != 200:
            return CustomerReply(webhook_status=answer.status_code, answered=False, seconds=None)
        query = {"phone_number_id": tenant["phoneNumberId"], "to": contact}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            sends = (await client.get(f"{stack.sandbox_url}/sandbox/messages", params=query)).json()["messages"]
            replies = [s for s in sends if ((s.get("payload") or {}).get("context") or {}).get("message_id") == wamid]
            if replies:
                seconds = round(float(replies[0]["timestamp"]) - written, 2)
                return CustomerReply(webhook_status=200, answered=True, seconds=seconds)
            await asyncio.sleep(0.2)  # polling the Graph API stand-in's own record of sends
    return CustomerReply(webhook_status=200, answered=False, seconds=None)
