"""Egress against the sandbox: retries on throttling, no retry on a closed window, at most one send."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.js import JetStreamContext

from tests.support.platform import Platform, running_platform
from zapflow.platform import bus, catalogue, metrics
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.registry import TenantRegistry
from zapflow.v1 import outbound_pb2

CUSTOMER = "5511966665555"


@pytest.fixture
async def platform(core: CoreSettings, registry: TenantRegistry) -> AsyncIterator[Platform]:
    async with running_platform(core, registry) as running:
        yield running


def command(platform: Platform, command_id: str, text: str) -> outbound_pb2.OutboundCommand:
    return outbound_pb2.OutboundCommand(
        command_id=command_id,
        tenant=platform.tenant.name,
        contact=CUSTOMER,
        turn_id=command_id,
        text=outbound_pb2.OutText(body=text),
    )


async def attempts(platform: Platform) -> list[dict[str, Any]]:
    found = (await platform.sandbox.get("/sandbox/attempts", params={"phone_number_id": platform.number})).json()
    return [a for a in found["attempts"] if (a["request"] or {}).get("type") == "text"]


async def inject(platform: Platform, kind: str, count: int) -> None:
    answer = await platform.sandbox.post(
        "/sandbox/faults", json={"kind": kind, "count": count, "phone_number_id": platform.number}
    )
    assert answer.status_code == 201, answer.text


async def test_a_429_then_200_gives_exactly_one_send(platform: Platform, js: JetStreamContext) -> None:
    await inject(platform, "429", 1)
    await bus.publish(
        js, catalogue.outbound_subject(platform.tenant.name, CUSTOMER), command(platform, "c-429", "hi"), "c-429"
    )

    assert await platform.wait_for_texts(CUSTOMER, 1) == ["hi"]
    statuses = [a["http_status"] for a in await attempts(platform)]
    assert statuses == [429, 200]


async def test_a_closed_window_131047_is_not_retried(platform: Platform, js: JetStreamContext) -> None:
    violations = metrics.WINDOW_VIOLATIONS.labels(platform.tenant.name)
    before = violations._value.get()
    await inject(platform, "131047", 5)
    await bus.publish(
        js, catalogue.outbound_subject(platform.tenant.name, CUSTOMER), command(platform, "c-win", "late"), "c-win"
    )

    result = await js.subscribe(catalogue.result_subject(platform.tenant.name, CUSTOMER), stream=catalogue.EVENTS.name)
    outcome = outbound_pb2.OutboundResult.FromString((await result.next_msg(timeout=15)).data)
    await result.unsubscribe()

    assert (outcome.command_id, outcome.result, outcome.error_code) == ("c-win", "window_closed", 131047)
    assert [a["http_status"] for a in await attempts(platform)] == [400]
    assert violations._value.get() == before + 1
    assert await platform.sent_to(CUSTOMER) == []


async def test_a_redelivered_command_is_not_sent_twice(platform: Platform, js: JetStreamContext) -> None:
    subject = catalogue.outbound_subject(platform.tenant.name, CUSTOMER)
    first = command(platform, "c-once", "only once")
    await bus.publish(js, subject, first, "c-once")
    await platform.wait_for_texts(CUSTOMER, 1)

    # The same command again, past JetStream's dedup window (a new Nats-Msg-Id), as a
    # redelivery after a crash would look to egress.
    await bus.publish(js, subject, first, "c-once-redelivered")
    await bus.publish(js, subject, command(platform, "c-after", "after"), "c-after")

    assert await platform.wait_for_texts(CUSTOMER, 2) == ["only once", "after"]
    assert len(await attempts(platform)) == 2


async def test_a_command_abandoned_mid_call_is_dead_lettered_not_resent(
    platform: Platform, js: JetStreamContext, core: CoreSettings
) -> None:
    from redis.asyncio import Redis

    from zapflow.platform.keys import command_key

    # What a gateway killed during its Graph API call leaves behind: an expired "calling" lease.
    redis = Redis.from_url(core.redis_url, decode_responses=True)
    await redis.set(command_key(platform.tenant.name, "c-crashed"), "calling:1000.0")
    await redis.aclose()
    await bus.publish(
        js, catalogue.outbound_subject(platform.tenant.name, CUSTOMER), command(platform, "c-crashed", "?"), "c-crashed"
    )

    letters = await js.subscribe(
        catalogue.dead_letters_of(catalogue.GATEWAY_SERVICE), stream=catalogue.DEAD_LETTER.name
    )
    from zapflow.v1 import turn_pb2

    letter = turn_pb2.DeadLetter.FromString((await letters.next_msg(timeout=15)).data)
    await letters.unsubscribe()
    assert "uncertain" in letter.reason
    assert await attempts(platform) == []


async def test_egress_respects_the_numbers_rate_limit(
    core: CoreSettings, registry: TenantRegistry, js: JetStreamContext
) -> None:
    async with running_platform(core, registry, messages_per_second=20) as platform:
        subject = catalogue.outbound_subject(platform.tenant.name, CUSTOMER)
        for i in range(21):
            await bus.publish(js, subject, command(platform, f"rate-{i}", f"m{i}"), f"rate-{i}")
        await platform.wait_for_texts(CUSTOMER, 21)
        stamps = sorted(m["timestamp"] for m in await platform.sent_to(CUSTOMER))
        # 21 sends at 20/s need at least one second between the first and the last.
        assert stamps[-1] - stamps[0] >= 0.95


async def test_a_retried_reply_is_not_overtaken_by_a_later_one(platform: Platform, js: JetStreamContext) -> None:
    await inject(platform, "429", 1)
    subject = catalogue.outbound_subject(platform.tenant.name, CUSTOMER)
    await bus.publish(js, subject, command(platform, "c-first", "first"), "c-first")
    await bus.publish(js, subject, command(platform, "c-second", "second"), "c-second")

    assert await platform.wait_for_texts(CUSTOMER, 2) == ["first", "second"]
    assert [a["http_status"] for a in await attempts(platform)] == [429, 200, 200]


async def test_a_tenant_with_a_hanging_graph_api_does_not_hold_up_another(
    platform: Platform, registry: TenantRegistry, js: JetStreamContext
) -> None:
    import asyncio

    from fastapi import FastAPI

    from tests.support.http import serve
    from tests.support.platform import register_number
    from tests.support.tenants import make_tenant

    release = asyncio.Event()
    all_stuck = asyncio.Event()
    received: list[str] = []
    hanging = FastAPI()

    @hanging.post("/{version}/{number}/messages")
    async def never_answers() -> dict[str, object]:
        received.append("request")
        if len(received) == 5:
            all_stuck.set()
        await asyncio.wait_for(release.wait(), timeout=30)
        return {"messages": [{"id": "wamid.LATE"}]}

    async with serve(hanging) as hanging_url:
        stuck = make_tenant(hanging_url)
        await registry.put(stuck)
        await register_number(platform.sandbox, stuck)
        # Several of the stuck tenant's contacts, then one reply of the healthy tenant.
        for i in range(5):
            stuck_command = command(platform, f"stuck-{i}", "never")
            stuck_command.tenant, stuck_command.contact = stuck.name, f"55110000000{i}"
            await bus.publish(
                js, catalogue.outbound_subject(stuck.name, stuck_command.contact), stuck_command, f"stuck-{i}"
            )
        await asyncio.wait_for(all_stuck.wait(), timeout=15)  # egress is inside all five calls
        subject = catalogue.outbound_subject(platform.tenant.name, CUSTOMER)
        await bus.publish(js, subject, command(platform, "healthy", "on time"), "healthy")

        # Well before the stuck calls' 10 s timeout.
        assert await platform.wait_for_texts(CUSTOMER, 1, timeout=5) == ["on time"]
        release.set()
