"""The conversation engine's promises: debounce (I4), order (I3), one reply per turn (I2)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from nats.js import JetStreamContext
from redis.asyncio import Redis

from tests.support import meta
from tests.support.platform import Platform, running_platform
from tests.support.tenants import secret
from zapflow.conversation.responder import Answer, TurnInput
from zapflow.platform import catalogue
from zapflow.platform.keys import ContactKeys
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.model import ReplySpec
from zapflow.tenants.registry import TenantRegistry
from zapflow.v1 import inbound_pb2, turn_pb2

CUSTOMER = "5511933332222"
QUIET_BOT: dict[str, Any] = {"rules": [], "fallback": {"text": "ok"}, "quoteAfterMessages": 2}


async def next_turns(js: JetStreamContext, platform: Platform, count: int, timeout: float = 20) -> list[turn_pb2.Turn]:
    """The next `count` turn events of the customer, read from JetStream as they are published."""
    subscription = await js.subscribe(
        catalogue.turn_subject(platform.tenant.name, CUSTOMER), stream=catalogue.EVENTS.name
    )
    try:
        return [turn_pb2.Turn.FromString((await subscription.next_msg(timeout=timeout)).data) for _ in range(count)]
    finally:
        await subscription.unsubscribe()


async def post(platform: Platform, messages: list[dict[str, Any]]) -> None:
    body, headers = meta.signed(meta.notification(platform.number, messages), secret(platform.tenant))
    answer = await platform.gateway.post("/webhook/whatsapp", content=body, headers=headers)
    assert answer.status_code == 200, answer.text


async def test_a_burst_within_the_window_is_one_turn_with_every_message_in_order(
    core: CoreSettings, registry: TenantRegistry, js: JetStreamContext
) -> None:
    async with running_platform(
        core, registry, debounce={"windowMs": 1000, "maxWaitMs": 10000}, **QUIET_BOT
    ) as platform:
        samples = meta.every_inbound_type(CUSTOMER)
        burst = [samples["image"], samples["location"], meta.text(CUSTOMER, "and one more thing")]
        turns = asyncio.create_task(next_turns(js, platform, 1))
        for message in burst:  # three separate webhooks within a second
            await post(platform, [message])
        (turn,) = await turns

        assert list(turn.inbound_wamids) == [m["id"] for m in burst]
        stored = [
            inbound_pb2.InboundMessage.FromString((await js.get_msg(catalogue.INBOUND.name, seq)).data or b"")
            for seq in turn.inbound_seqs
        ]
        assert [m.type for m in stored] == ["image", "location", "text"]
        assert stored[0].media.caption == "a photo"
        assert await platform.wait_for_texts(CUSTOMER, 1) == ["ok"]
        sent = await platform.sent_to(CUSTOMER)
        # A long turn quotes its last message.
        assert sent[0]["payload"]["context"] == {"message_id": burst[-1]["id"]}


async def test_two_messages_three_seconds_apart_are_two_turns_answered_in_order(
    core: CoreSettings, registry: TenantRegistry, js: JetStreamContext
) -> None:
    bot = {"rules": [{"name": "a", "match": {"keywords": ["first"]}, "reply": {"text": "one"}},
                     {"name": "b", "match": {"keywords": ["second"]}, "reply": {"text": "two"}}],
           "fallback": {"text": "?"}}  # fmt: skip
    async with running_platform(core, registry, debounce={"windowMs": 2000, "maxWaitMs": 10000}, **bot) as platform:
        turns = asyncio.create_task(next_turns(js, platform, 2))
        started = time.monotonic()
        await platform.say(CUSTOMER, "first")
        await asyncio.sleep(3.0)  # the scenario itself: the customer pauses three seconds
        await platform.say(CUSTOMER, "second")
        first, second = await turns

        assert len(first.inbound_wamids) == 1
        assert len(second.inbound_wamids) == 1
        assert first.last_inbound_seq < second.inbound_seqs[0]
        assert await platform.wait_for_texts(CUSTOMER, 2) == ["one", "two"]
        assert time.monotonic() - started >= 5.0  # the second turn waited for its own window


async def test_debounce_is_capped_by_the_maximum_wait(
    core: CoreSettings, registry: TenantRegistry, js: JetStreamContext
) -> None:
    async with running_platform(core, registry, debounce={"windowMs": 800, "maxWaitMs": 1500}, **QUIET_BOT) as platform:
        turns = asyncio.create_task(next_turns(js, platform, 2))
        for i in range(12):  # a message every 0.4 s for ~4.8 s: the window alone would never close
            await platform.say(CUSTOMER, f"part {i}")
            await asyncio.sleep(0.4)  # the customer's typing pace, not synchronisation
        first, second = await turns
        assert 2 <= len(first.inbound_wamids) < 12
        assert first.last_inbound_seq < second.inbound_seqs[0]


class GatedResponder:
    """Answers the first turn only when the test opens the gate; records every turn's input."""

    name = "rules"

    def __init__(self) -> None:
        self.first_turn_started = asyncio.Event()
        self.gate = asyncio.Event()
        self.inputs: list[list[str]] = []

    async def answer(self, turn: TurnInput) -> Answer:
        self.inputs.append([m.text.body for m in turn.messages])
        if len(self.inputs) == 1:
            self.first_turn_started.set()
            await asyncio.wait_for(self.gate.wait(), timeout=30)
        return Answer("rule", (ReplySpec(text=f"answer to {' + '.join(self.inputs[-1])}"),))


async def test_a_message_arriving_while_its_turn_is_answered_starts_the_next_turn(
    core: CoreSettings, registry: TenantRegistry, js: JetStreamContext
) -> None:
    responder = GatedResponder()
    async with running_platform(
        core, registry, debounce={"windowMs": 300, "maxWaitMs": 2000}, responders={"rules": responder}, **QUIET_BOT
    ) as platform:
        turns = asyncio.create_task(next_turns(js, platform, 2))
        await platform.say(CUSTOMER, "slow question")
        await asyncio.wait_for(responder.first_turn_started.wait(), timeout=15)
        await platform.say(CUSTOMER, "while you think")
        # The new message is not merged into the running turn, nor answered before it.
        responder.gate.set()
        first, second = await turns

        assert responder.inputs == [["slow question"], ["while you think"]]
        assert await platform.wait_for_texts(CUSTOMER, 2) == ["answer to slow question", "answer to while you think"]
        assert first.last_inbound_seq < second.inbound_seqs[0]


async def test_reactions_are_settled_without_a_reply(
    core: CoreSettings, registry: TenantRegistry, js: JetStreamContext
) -> None:
    async with running_platform(core, registry, **QUIET_BOT) as platform:
        turns = asyncio.create_task(next_turns(js, platform, 1))
        await post(platform, [meta.every_inbound_type(CUSTOMER)["reaction"]])
        (turn,) = await turns
        assert (turn.outcome, list(turn.command_ids)) == ("silent", [])
        assert await platform.sent_to(CUSTOMER) == []


async def test_idempotency_key_lifetimes_are_per_tenant(
    core: CoreSettings, registry: TenantRegistry, js: JetStreamContext
) -> None:
    lifetimes = {"idempotency": {"messageKeyTtlSeconds": 120, "turnKeyTtlSeconds": 90}}
    async with running_platform(core, registry, spec=lifetimes, **QUIET_BOT) as platform:
        turns = asyncio.create_task(next_turns(js, platform, 1))
        wamid = await platform.say(CUSTOMER, "hello")
        (turn,) = await turns
        redis = Redis.from_url(core.redis_url, decode_responses=True)
        try:
            message_ttl = await redis.ttl(ContactKeys(platform.tenant.name, CUSTOMER).message(wamid))
            turn_ttl = await redis.ttl(ContactKeys(platform.tenant.name, CUSTOMER).turn(turn.turn_id))
        finally:
            await redis.aclose()
        assert 0 < message_ttl <= 120
        assert 0 < turn_ttl <= 90
