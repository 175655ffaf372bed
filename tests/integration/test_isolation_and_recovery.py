"""A noisy tenant cannot starve the others (I5), and Redis losing its data loses no reply and repeats none."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import httpx
import pytest
from nats.js import JetStreamContext
from redis.asyncio import Redis

from tests.support.platform import Platform, eventually, register_number, running_platform
from tests.support.servers import ManagedServer
from tests.support.tenants import make_tenant
from tests.support.turns import turns_covering
from zapflow.conversation.responder import Answer, TurnInput
from zapflow.platform.keys import DUE, ContactKeys
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.model import BotTenant, ReplySpec
from zapflow.tenants.registry import TenantRegistry


class SlowForOneTenant:
    """Hangs every turn of the noisy tenant until released; answers the others at once."""

    name = "rules"

    def __init__(self) -> None:
        self.noisy = ""
        self.release = asyncio.Event()
        self.in_flight: dict[str, int] = defaultdict(int)
        self.most_in_flight: dict[str, int] = defaultdict(int)

    async def answer(self, turn: TurnInput) -> Answer:
        tenant = turn.tenant.name
        self.in_flight[tenant] += 1
        self.most_in_flight[tenant] = max(self.most_in_flight[tenant], self.in_flight[tenant])
        try:
            if tenant == self.noisy:
                await asyncio.wait_for(self.release.wait(), timeout=60)
            return Answer("rule", (ReplySpec(text=f"hello from {tenant}"),))
        finally:
            self.in_flight[tenant] -= 1


async def add_tenant(platform: Platform, registry: TenantRegistry) -> BotTenant:
    """A second tenant on the same running platform, known to the sandbox and the gateway."""
    tenant = make_tenant(
        str(platform.sandbox.base_url).rstrip("/"), maxConcurrentCalls=2, rules=[], fallback={"text": "x"}
    )
    await registry.put(tenant)
    await register_number(platform.sandbox, tenant)
    return tenant


async def say(platform: Platform, tenant: BotTenant, customer: str, text: str) -> httpx.Response:
    number = tenant.spec.whatsapp.phone_number_id
    return await platform.sandbox.post(
        "/sandbox/chat/send", json={"phone_number_id": number, "from": customer, "text": text}
    )


async def test_a_slow_tenant_is_capped_and_does_not_starve_another(
    core: CoreSettings, registry: TenantRegistry
) -> None:
    responder = SlowForOneTenant()
    async with running_platform(
        core, registry, responders={"rules": responder}, maxConcurrentCalls=2, rules=[], fallback={"text": "x"}
    ) as platform:
        responder.noisy = platform.tenant.name
        quiet = await add_tenant(platform, registry)

        for i in range(6):  # six contacts of the noisy tenant, all stuck in its slow responder
            await platform.say(f"551190000000{i}", "hi")

        async def quiet_tenant_known() -> bool:
            return (await say(platform, quiet, "5511980000000", "hello")).json()["gateway_status"] == 200

        await eventually(quiet_tenant_known, what="the gateway to know the second tenant")

        async def quiet_answered() -> list[dict[str, object]] | None:
            sent = (await platform.sandbox.get("/sandbox/messages", params={"to": "5511980000000"})).json()["messages"]
            return sent or None

        await eventually(quiet_answered, what="the quiet tenant's reply while the noisy one is stuck")
        assert responder.most_in_flight[platform.tenant.name] == 2  # its own cap, not more
        responder.release.set()
        for i in range(6):
            await platform.wait_for_texts(f"551190000000{i}", 1)


async def test_redis_losing_its_data_while_messages_are_held_loses_no_reply_and_repeats_none(
    core: CoreSettings,
    registry: TenantRegistry,
    redis: ManagedServer,
    js: JetStreamContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    customer = "5511911110000"
    # Held messages heartbeat, and their contacts' deadlines are re-armed, every third of the ack wait.
    ack_wait_s = 3.0
    monkeypatch.setenv("ZAPFLOW_CONVERSATION_ACK_WAIT_S", str(ack_wait_s))
    async with running_platform(
        core,
        registry,
        debounce={"windowMs": 1500, "maxWaitMs": 5000},
        greeting={"text": "Welcome!"},
        rules=[],
        fallback={"text": "ok"},
    ) as platform:
        keys = ContactKeys(platform.tenant.name, customer)
        first = await platform.say(customer, "first")
        assert await platform.wait_for_texts(customer, 1) == ["Welcome!"]
        burst = [await platform.say(customer, "second"), await platform.say(customer, "third")]
        state = Redis.from_url(core.redis_url, decode_responses=True)
        try:

            async def held_and_due() -> bool:
                ingested = await state.exists(*(keys.message(wamid) for wamid in burst)) == len(burst)
                return ingested and await state.zscore(DUE, keys.due_member) is not None

            await eventually(held_and_due, what="the burst to be held with its deadline pending")
        finally:
            await state.aclose()

        killed_at = time.time()
        redis.kill()  # this test's redis keeps nothing on disk: the deadline and the cursor are gone
        redis.start()
        restarted_at = time.time()

        # The cursor is rebuilt from the last turn event: "first" is not answered again, and the
        # contact is not greeted twice.
        assert await platform.wait_for_texts(customer, 2) == ["Welcome!", "ok"]
        last = await platform.say(customer, "fourth")
        assert await platform.wait_for_texts(customer, 3) == ["Welcome!", "ok", "ok"]

        # Every message in exactly one turn, and one reply per turn.
        turns = await turns_covering(js, platform.tenant.name, customer, [first, *burst, last])
        assert [list(turn.inbound_wamids) for turn in turns] == [[first], burst, [last]]
        # The burst was still held at the kill. A heartbeat made its contact due again: the first one
        # after the restart, or the next if the first met a connection the restart had broken.
        assert killed_at < turns[1].closed_at.ToNanoseconds() / 1e9 <= restarted_at + 2 * ack_wait_s / 3 + 0.3
