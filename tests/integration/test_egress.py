"""Egress against the sandbox: retries on throttling, no retry on a closed window, at most one send."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Response
from nats.js import JetStreamContext
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from tests.support.http import serve
from tests.support.platform import Platform, eventually, register_number, running_platform
from tests.support.servers import ManagedServer, free_port
from tests.support.tenants import make_tenant
from zapflow.platform import bus, catalogue
from zapflow.platform.keys import ContactKeys, command_key
from zapflow.platform.servers import zapflow_command
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.registry import TenantRegistry
from zapflow.v1 import outbound_pb2, turn_pb2

CUSTOMER = "5511966665555"
# How much later than asked a retry may come, and how far a send may stray from its rate-limit
# slot: 5-30 ms measured on a 2-core box, but a stall of the test's event loop (the sandbox and a
# gateway share it) has delayed a send by 0.5 s when other tests loaded the box.
RETRY_TOLERANCE_S = 0.5
PACING_TOLERANCE_S = 0.5
# A stall delays the sends behind it and bunches them up: a second may then hold one or two more.
BUNCHED_SENDS = 2
OUTBOUND = "zapflow_gateway_outbound_total"
GatewayProcess = Callable[..., ManagedServer]


@pytest.fixture
async def platform(core: CoreSettings, registry: TenantRegistry) -> AsyncIterator[Platform]:
    async with running_platform(core, registry) as running:
        # The customer wrote an hour ago, as the commands these tests publish say (window_closes_at).
        await running.customer_wrote(CUSTOMER, seconds_ago=3600)
        yield running


@pytest.fixture
def gateway_process(core: CoreSettings, tmp_path: Path) -> Iterator[GatewayProcess]:
    """Starts `zapflow gateway` processes on the test's servers; extra keywords are its ZAPFLOW_GATEWAY_* settings."""
    started: list[ManagedServer] = []

    def start(**gateway_settings: object) -> ManagedServer:
        name = f"gateway-{len(started)}"
        port = free_port()
        env = {key: value for key, value in os.environ.items() if not key.startswith("ZAPFLOW_")}
        env |= {"ZAPFLOW_NATS_URL": core.nats_url, "ZAPFLOW_REDIS_URL": core.redis_url, "ZAPFLOW_LOG_LEVEL": "WARNING"}
        env |= {f"ZAPFLOW_GATEWAY_{key.upper()}": str(value) for key, value in gateway_settings.items()}
        command = zapflow_command("gateway", "--host", "127.0.0.1", "--port", str(port))
        process = ManagedServer(name, "http", command, port, env=env, log=tmp_path / f"{name}.log")
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        process.stop()


async def ready(process: ManagedServer) -> ManagedServer:
    """Wait until the process's consumers run (its /readyz says so)."""

    async def answers() -> bool:
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(f"{process.url}/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    await eventually(answers, what=f"{process.name} to be ready")
    return process


class HeldGraphApi:
    """A Graph API that holds every call until the test releases them."""

    def __init__(self, expected_calls: int = 1) -> None:
        self.calls = 0
        self.all_arrived = asyncio.Event()  # `expected_calls` calls are being held
        self.release = asyncio.Event()
        self._expected_calls = expected_calls

    def app(self) -> FastAPI:
        graph = FastAPI()

        @graph.post("/{version}/{number}/messages")
        async def held() -> dict[str, object]:
            self.calls += 1
            if self.calls == self._expected_calls:
                self.all_arrived.set()
            await asyncio.wait_for(self.release.wait(), timeout=60)
            return {"messages": [{"id": "wamid.LATE"}]}

        return graph


def exposed_sample(exposition: str, name: str, labels: dict[str, str]) -> float:
    """A sample of another process's /metrics page (0 when it has none yet)."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def command(tenant: str, command_id: str, text: str, contact: str = CUSTOMER) -> outbound_pb2.OutboundCommand:
    """A bot reply to a customer who wrote a moment ago (their window is open)."""
    reply = outbound_pb2.OutboundCommand(
        command_id=command_id,
        tenant=tenant,
        contact=contact,
        turn_id=command_id,
        text=outbound_pb2.OutText(body=text),
    )
    reply.window_closes_at.FromDatetime(datetime.now(UTC) + timedelta(hours=23))
    return reply


async def send(js: JetStreamContext, tenant: str, command_id: str, text: str, contact: str = CUSTOMER) -> None:
    subject = catalogue.outbound_subject(tenant, contact)
    await bus.publish(js, subject, command(tenant, command_id, text, contact), command_id)


async def attempts(platform: Platform) -> list[dict[str, Any]]:
    found = (await platform.sandbox.get("/sandbox/attempts", params={"phone_number_id": platform.number})).json()
    return [a for a in found["attempts"] if (a["request"] or {}).get("type") == "text"]


async def inject(platform: Platform, kind: str, count: int) -> None:
    answer = await platform.sandbox.post(
        "/sandbox/faults", json={"kind": kind, "count": count, "phone_number_id": platform.number}
    )
    assert answer.status_code == 201, answer.text


async def test_a_429_is_retried_after_the_backoff_and_sent_once(platform: Platform, js: JetStreamContext) -> None:
    await inject(platform, "429", 1)
    await send(js, platform.tenant.name, "c-429", "hi")

    assert await platform.wait_for_texts(CUSTOMER, 1) == ["hi"]
    refused, accepted = await attempts(platform)
    assert (refused["http_status"], accepted["http_status"]) == (429, 200)
    # Meta gave no Retry-After: the consumer's first backoff step.
    backoff = catalogue.EGRESS.backoff_s[0]
    assert backoff <= accepted["timestamp"] - refused["timestamp"] <= backoff + RETRY_TOLERANCE_S


async def test_a_429_with_retry_after_waits_as_long_as_meta_asked(
    platform: Platform, registry: TenantRegistry, js: JetStreamContext
) -> None:
    retry_after_s = 2  # unlike the 1 s backoff, so that ignoring the header shows
    calls: list[float] = []
    graph = FastAPI()

    @graph.post("/{version}/{number}/messages")
    async def throttled_once() -> Response:
        calls.append(time.monotonic())
        if len(calls) == 1:
            error = b'{"error": {"message": "(#130429) Rate limit hit", "code": 130429}}'
            return Response(error, status_code=429, headers={"Retry-After": str(retry_after_s)})
        return Response(b'{"messages": [{"id": "wamid.AFTER"}]}', media_type="application/json")

    async with serve(graph) as graph_url:
        throttled = make_tenant(graph_url)
        await registry.put(throttled)
        await send(js, throttled.name, "c-retry-after", "patience")

        async def sent() -> bool:
            return len(calls) == 2

        await eventually(sent, what="the retried call")
        assert retry_after_s <= calls[1] - calls[0] <= retry_after_s + RETRY_TOLERANCE_S


async def test_a_closed_window_131047_is_not_retried(platform: Platform, js: JetStreamContext) -> None:
    violations = {"tenant": platform.tenant.name}
    before = REGISTRY.get_sample_value("zapflow_gateway_window_violations_total", violations) or 0.0
    await inject(platform, "131047", 5)
    await send(js, platform.tenant.name, "c-win", "late")

    result = await js.subscribe(catalogue.result_subject(platform.tenant.name, CUSTOMER), stream=catalogue.EVENTS.name)
    outcome = outbound_pb2.OutboundResult.FromString((await result.next_msg(timeout=15)).data)
    await result.unsubscribe()

    assert (outcome.command_id, outcome.result, outcome.error_code) == ("c-win", "window_closed", 131047)
    assert [a["http_status"] for a in await attempts(platform)] == [400]
    assert REGISTRY.get_sample_value("zapflow_gateway_window_violations_total", violations) == before + 1
    assert await platform.sent_to(CUSTOMER) == []


async def test_a_redelivered_command_is_not_sent_twice(platform: Platform, js: JetStreamContext) -> None:
    subject = catalogue.outbound_subject(platform.tenant.name, CUSTOMER)
    first = command(platform.tenant.name, "c-once", "only once")
    await bus.publish(js, subject, first, "c-once")
    await platform.wait_for_texts(CUSTOMER, 1)

    # The same command again, past JetStream's dedup window (a new Nats-Msg-Id), as a
    # redelivery after a crash would look to egress.
    await bus.publish(js, subject, first, "c-once-redelivered")
    await send(js, platform.tenant.name, "c-after", "after")

    assert await platform.wait_for_texts(CUSTOMER, 2) == ["only once", "after"]
    assert len(await attempts(platform)) == 2


async def test_a_gateway_killed_during_its_graph_api_call_dead_letters_the_command_as_uncertain(
    core: CoreSettings, registry: TenantRegistry, js: JetStreamContext, gateway_process: GatewayProcess
) -> None:
    graph = HeldGraphApi()
    async with serve(graph.app()) as graph_url:
        tenant = make_tenant(graph_url)
        await registry.put(tenant)
        # A short lease and ack wait, so the redelivery comes within seconds and finds the lease expired.
        ack_wait_s = 2
        gateway = await ready(gateway_process(send_lease_s=1, egress_ack_wait_s=ack_wait_s))
        letters = await js.subscribe(
            catalogue.dead_letters_of(catalogue.GATEWAY_SERVICE), stream=catalogue.DEAD_LETTER.name
        )
        await send(js, tenant.name, "c-killed", "are you there?")
        await asyncio.wait_for(graph.all_arrived.wait(), timeout=15)
        gateway.kill()  # SIGKILL while the Graph API holds the call
        redis = Redis.from_url(core.redis_url, decode_responses=True)
        try:
            assert str(await redis.get(command_key(tenant.name, "c-killed"))).startswith("calling:")
            await asyncio.to_thread(gateway.start)
            await ready(gateway)

            # The command comes back one ack wait after its delivery, so at most that long from now.
            letter = turn_pb2.DeadLetter.FromString((await letters.next_msg(timeout=ack_wait_s + 1)).data)
            assert letter.original_subject == catalogue.outbound_subject(tenant.name, CUSTOMER)
            assert letter.reason.startswith("uncertain")
            assert graph.calls == 1  # never sent again
            assert str(await redis.get(command_key(tenant.name, "c-killed"))).startswith("calling:")
            async with httpx.AsyncClient() as client:
                exposed = (await client.get(f"{gateway.url}/metrics")).text
            assert exposed_sample(exposed, OUTBOUND, {"tenant": tenant.name, "result": "uncertain"}) == 1
        finally:
            await redis.aclose()
            await letters.unsubscribe()
            graph.release.set()


async def test_two_gateway_replicas_share_the_numbers_rate_limit(
    core: CoreSettings, registry: TenantRegistry, js: JetStreamContext, gateway_process: GatewayProcess
) -> None:
    per_second, count = 10, 31
    async with running_platform(core, registry, messages_per_second=per_second) as platform:
        tenant = platform.tenant.name
        # The in-process gateway is one replica, this process the other: one egress consumer each.
        other = await ready(gateway_process())
        # A contact each, so that nothing waits for per-contact order: only the number's rate.
        contacts = [f"5511977{i:06d}" for i in range(count)]
        for contact in contacts:
            await platform.customer_wrote(contact)
        for i, contact in enumerate(contacts):
            await send(js, tenant, f"rate-{i}", f"m{i}", contact=contact)

        async def all_sent() -> list[dict[str, Any]] | None:
            sent = (await platform.sandbox.get("/sandbox/messages", params={"phone_number_id": platform.number})).json()
            return sent["messages"] if len(sent["messages"]) >= count else None

        stamps = sorted(m["timestamp"] for m in await eventually(all_sent, what=f"{count} sends"))
        async with httpx.AsyncClient() as client:
            exposed = (await client.get(f"{other.url}/metrics")).text

    labels = {"tenant": tenant, "result": "sent"}
    here, there = REGISTRY.get_sample_value(OUTBOUND, labels) or 0.0, exposed_sample(exposed, OUTBOUND, labels)
    assert len(stamps) == count
    assert here + there == count
    assert here > 0 and there > 0, f"one replica sent everything: {here} and {there}"
    # Upper bound: both replicas draw on one budget (two budgets would take half the time), and no
    # second holds more sends than the rate allows.
    ideal_s = (count - 1) / per_second
    assert stamps[-1] - stamps[0] >= ideal_s - PACING_TOLERANCE_S
    busiest = max(sum(1 for t in stamps if start <= t < start + 1) for start in stamps)
    assert busiest <= per_second + BUNCHED_SENDS
    # Lower bound: the limiter holds back no more than it must (a stall may also waste a slot
    # that no send was waiting for: the budget is not banked).
    assert stamps[-1] - stamps[0] <= ideal_s + 2 * PACING_TOLERANCE_S


async def test_a_retried_reply_is_not_overtaken_by_a_later_one(platform: Platform, js: JetStreamContext) -> None:
    await inject(platform, "429", 1)
    await send(js, platform.tenant.name, "c-first", "first")
    await send(js, platform.tenant.name, "c-second", "second")

    assert await platform.wait_for_texts(CUSTOMER, 2) == ["first", "second"]
    assert [a["http_status"] for a in await attempts(platform)] == [429, 200, 200]


async def test_a_tenant_with_a_hanging_graph_api_does_not_hold_up_another(
    platform: Platform, registry: TenantRegistry, js: JetStreamContext
) -> None:
    hanging = HeldGraphApi(expected_calls=5)
    async with serve(hanging.app()) as hanging_url:
        stuck = make_tenant(hanging_url)
        await registry.put(stuck)
        await register_number(platform.sandbox, stuck)
        # Several of the stuck tenant's contacts, then one reply of the healthy tenant.
        for i in range(5):
            await send(js, stuck.name, f"stuck-{i}", "never", contact=f"55110000000{i}")
        await asyncio.wait_for(hanging.all_arrived.wait(), timeout=15)  # egress is inside all five calls
        await send(js, platform.tenant.name, "healthy", "on time")

        # Well before the stuck calls' 10 s timeout.
        assert await platform.wait_for_texts(CUSTOMER, 1, timeout=5) == ["on time"]
        hanging.release.set()


async def test_free_text_past_the_customer_s_window_never_leaves_but_a_template_does(
    platform: Platform, js: JetStreamContext
) -> None:
    tenant, subject = platform.tenant.name, catalogue.outbound_subject(platform.tenant.name, CUSTOMER)
    outside = {"tenant": tenant, "sender": "agent"}
    before = REGISTRY.get_sample_value("zapflow_gateway_outside_window_total", outside) or 0.0
    results = await js.subscribe(catalogue.result_subject(tenant, CUSTOMER), stream=catalogue.EVENTS.name)
    late = command(tenant, "c-closed", "are you still there?")
    late.sender, late.agent = "agent", "ana@example.com"
    late.window_closes_at.FromDatetime(datetime.now(UTC) - timedelta(minutes=1))
    await bus.publish(js, subject, late, late.command_id)
    template = command(tenant, "c-template", "")
    template.template.CopyFrom(outbound_pb2.OutTemplate(name="order_update", language="pt_BR"))
    template.ClearField("window_closes_at")
    await bus.publish(js, subject, template, template.command_id)

    outcomes = [outbound_pb2.OutboundResult.FromString((await results.next_msg(timeout=15)).data) for _ in range(2)]
    await results.unsubscribe()
    by_id = {outcome.command_id: outcome for outcome in outcomes}
    assert (by_id["c-closed"].result, by_id["c-closed"].error_code) == ("window_closed", 131047)
    assert by_id["c-template"].result == "sent"
    # Refused here: Meta never saw the free text.
    assert [m["payload"]["type"] for m in await platform.sent_to(CUSTOMER)] == ["template"]
    assert await attempts(platform) == []
    assert REGISTRY.get_sample_value("zapflow_gateway_outside_window_total", outside) == before + 1


async def test_a_customer_who_wrote_since_the_command_was_made_reopened_the_window(
    platform: Platform, js: JetStreamContext, core: CoreSettings
) -> None:
    tenant = platform.tenant.name
    stale = command(tenant, "c-reopened", "welcome back")
    stale.window_closes_at.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
    # The conversation engine records when the customer last wrote (the message's own timestamp).
    async with Redis.from_url(core.redis_url) as redis:
        await redis.set(ContactKeys(tenant, CUSTOMER).window, int(time.time()) - 60)
    await bus.publish(js, catalogue.outbound_subject(tenant, CUSTOMER), stale, stale.command_id)

    assert await platform.wait_for_texts(CUSTOMER, 1) == ["welcome back"]


async def test_without_a_window_from_its_producer_or_redis_free_text_is_not_sent(
    platform: Platform, js: JetStreamContext
) -> None:
    unknown = command(platform.tenant.name, "c-unknown", "hello?")
    unknown.ClearField("window_closes_at")
    results = await js.subscribe(catalogue.result_subject(platform.tenant.name, CUSTOMER), stream=catalogue.EVENTS.name)
    await bus.publish(js, catalogue.outbound_subject(platform.tenant.name, CUSTOMER), unknown, unknown.command_id)
    outcome = outbound_pb2.OutboundResult.FromString((await results.next_msg(timeout=15)).data)
    await results.unsubscribe()

    assert outcome.result == "window_closed"
    assert await attempts(platform) == []


async def test_messages_to_one_customer_are_spaced_after_a_burst_and_others_are_not_held_up(
    core: CoreSettings, registry: TenantRegistry, js: JetStreamContext
) -> None:
    burst, interval_s = 2, 0.6
    pacing = {"rateLimits": {"perCustomerBurst": burst, "perCustomerIntervalSeconds": interval_s}}
    async with running_platform(core, registry, spec=pacing) as platform:
        tenant = platform.tenant.name
        other = "5511955554444"
        for customer in (CUSTOMER, other):
            await platform.customer_wrote(customer)
        for i in range(5):
            await send(js, tenant, f"pace-{i}", f"m{i}")
        await send(js, tenant, "pace-other", "not held up", contact=other)

        async def all_sent() -> list[dict[str, Any]] | None:
            sent = (await platform.sandbox.get("/sandbox/messages", params={"phone_number_id": platform.number})).json()
            return sent["messages"] if len(sent["messages"]) >= 6 else None

        sent = await eventually(all_sent, what="6 sends")

    stamps = [m["timestamp"] for m in sent if m["to"] == CUSTOMER]
    gaps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    # The burst goes at once (a turn's replies are not delayed); then one every interval.
    assert gaps[0] < interval_s
    assert all(gap >= interval_s - 0.05 for gap in gaps[burst - 1 :]), gaps
    other_sent = next(m["timestamp"] for m in sent if m["to"] == other)
    assert other_sent < stamps[-1] - interval_s, "another customer's message waited behind the paced ones"
