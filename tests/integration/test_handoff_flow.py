"""Issue #11's promises through the whole platform: sandbox → gateway → conversation → handoff service → egress.

Once a person has the conversation the bot sends nothing to the customer until it is handed back;
what the customer writes meanwhile reaches the agent, all of it and in order; after resolve the bot
answers again, after the agent's closing message. Real NATS, Redis and SQLite, the sandbox for
WhatsApp, the recorder for the transcripts the inbox shows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import meta
from tests.support.handoff import (
    AgentApi,
    agent_api,
    consumers_settled,
    forwarded_events,
    forwarded_wamids,
    handoffs_of,
)
from tests.support.http import serve
from tests.support.openai_server import FakeOpenAI, Text, ToolCall
from tests.support.platform import Platform, eventually, knowledge_stand_in, running_platform
from tests.support.turns import turns_covering
from zapflow.conversation.responder import Answer, TurnInput
from zapflow.knowledge.messages import SearchReply
from zapflow.platform import bus, catalogue
from zapflow.platform.keys import ContactKeys
from zapflow.platform.settings import CoreSettings
from zapflow.store.engine import create_engine
from zapflow.tenants.model import ReplySpec
from zapflow.tenants.registry import TenantRegistry
from zapflow.v1 import outbound_pb2

CUSTOMER = "5511944443333"
ASK = "quero falar com um atendente"
NOTICE = "Um atendente vai falar com você por aqui."
CLOSING = "Resolvido! O assistente volta a te atender."
HANDOFF_SPEC: dict[str, Any] = {"handoff": {"notice": NOTICE}}
FALLBACK = "Não entendi."
FORWARDED_MESSAGES = 20


@pytest.fixture
async def database(core: CoreSettings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(core.database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def keys_store(core: CoreSettings) -> AsyncIterator[Redis]:
    client = Redis.from_url(core.redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def platform(core: CoreSettings, registry: TenantRegistry) -> AsyncIterator[Platform]:
    """The demo rules (greeting, "price", fallback "Sorry?") with the handoff service and the recorder."""
    async with running_platform(core, registry, spec=HANDOFF_SPEC, record=True, handoff={}) as running:
        yield running


@pytest.fixture
async def agent(platform: Platform, database: AsyncEngine) -> AsyncIterator[AgentApi]:
    async with agent_api(database, platform.handoff_url, platform.tenant.name) as api:
        yield api


async def asks_for_a_person(platform: Platform, agent: AgentApi) -> tuple[str, dict[str, Any]]:
    """The customer asks for a person in words; the wamid, and the conversation once it is in the queue."""
    wamid = await platform.say(CUSTOMER, ASK)
    assert await platform.wait_for_texts(CUSTOMER, 1) == [NOTICE]

    async def queued() -> dict[str, Any] | None:
        return await agent.conversation_of(CUSTOMER)

    return wamid, await eventually(queued, what="the conversation in the agents' queue")


async def all_forwarded(database: AsyncEngine, platform: Platform, wamids: list[str], timeout: float = 20) -> list[str]:
    """The wamids recorded as forwarded to a person, once they include all of `wamids`."""

    async def covered() -> list[str] | None:
        found = await forwarded_wamids(database, platform.tenant.name, CUSTOMER)
        return found if set(wamids) <= set(found) else None

    return await eventually(covered, timeout, f"{len(wamids)} messages forwarded to the agent")


# --- the customer asks, the bot steps back ---


async def test_asking_for_a_person_queues_the_conversation_and_only_the_notice_is_sent(
    platform: Platform, agent: AgentApi, database: AsyncEngine, keys_store: Redis, js: JetStreamContext
) -> None:
    wamid, conversation = await asks_for_a_person(platform, agent)

    assert (conversation["status"], conversation["reason"], conversation["detail"], conversation["agent"]) == (
        "waiting",
        "customer_asked",
        "atendente",
        None,
    )
    assert [c["contact"] for c in await agent.conversations("waiting")] == [CUSTOMER]
    # The turn asked instead of answering: no greeting, no fallback, not even a read receipt.
    [turn] = await turns_covering(js, platform.tenant.name, CUSTOMER, [wamid])
    assert (turn.outcome, list(turn.command_ids)) == ("handoff", [])
    # The turn that asked owns the conversation: from now on the bot sends nothing.
    owner = await keys_store.get(ContactKeys(platform.tenant.name, CUSTOMER).owner)
    assert owner == turn.turn_id == conversation["request_id"]
    # The message that asked is the first one the agent gets.
    assert await all_forwarded(database, platform, [wamid]) == [wamid]
    assert await platform.texts_to(CUSTOMER) == [NOTICE]
    [handoff] = await handoffs_of(database, platform.tenant.name, CUSTOMER)
    assert (handoff.status, handoff.reason) == ("waiting", "customer_asked")


async def test_twenty_messages_while_handed_off_get_no_bot_reply_and_reach_the_agent_in_order(
    platform: Platform, agent: AgentApi, database: AsyncEngine, js: JetStreamContext
) -> None:
    asked, conversation = await asks_for_a_person(platform, agent)
    texts = [f"mensagem {i}" for i in range(FORWARDED_MESSAGES)]
    wamids = [await platform.say(CUSTOMER, text) for text in texts]

    # Bursts may be merged into fewer turns; their messages still reach the agent one by one, in order.
    assert await all_forwarded(database, platform, wamids) == [asked, *wamids]
    events = await forwarded_events(database, platform.tenant.name, CUSTOMER)
    assert len({event["turn_id"] for event in events}) == len(events), "a turn forwarded twice"
    turns = await turns_covering(js, platform.tenant.name, CUSTOMER, wamids)
    later = [turn for turn in turns if set(turn.inbound_wamids) & set(wamids)]
    assert {(turn.outcome, len(turn.command_ids)) for turn in later} == {("forwarded", 0)}
    assert [w for turn in later for w in turn.inbound_wamids] == wamids
    # Every turn is settled and none published a reply: the customer got the notice and nothing else.
    assert await platform.texts_to(CUSTOMER) == [NOTICE]

    async def transcribed() -> dict[str, Any] | None:
        detail = await agent.read(conversation["id"])
        customer = [entry for entry in detail["transcript"] if entry["role"] == "customer"]
        return detail if len(customer) == FORWARDED_MESSAGES + 1 else None

    detail = await eventually(transcribed, what="the recorder's transcript of the 21 customer messages")
    customer = [(e["id"], e["text"]) for e in detail["transcript"] if e["role"] == "customer"]
    assert customer == [(asked, ASK), *zip(wamids, texts, strict=True)]
    # The notice is marked as the system's, in its place; nothing in the transcript is the bot's.
    everything = [(e["role"], e["text"]) for e in detail["transcript"]]
    assert everything == [("customer", ASK), ("system", NOTICE), *(("customer", text) for text in texts)]


async def test_a_message_written_in_the_second_of_the_notice_is_shown_after_it(
    platform: Platform, agent: AgentApi
) -> None:
    _, conversation = await asks_for_a_person(platform, agent)

    async def notice_entry() -> dict[str, Any] | None:
        transcript = (await agent.read(conversation["id"]))["transcript"]
        return next((e for e in transcript if e["role"] == "system"), None)

    notice_at = datetime.fromisoformat((await eventually(notice_entry, what="the notice in the transcript"))["at"])
    # The customer answers the notice within the second it was sent: Meta stamps messages in whole seconds.
    message = meta.text(CUSTOMER, "ok, obrigado", timestamp=str(int(notice_at.timestamp())))
    assert (await platform.deliver(meta.notification(platform.number, [message]))).status_code == 200

    async def transcribed() -> list[tuple[str, str]] | None:
        entries = [(e["role"], e["text"]) for e in (await agent.read(conversation["id"]))["transcript"]]
        return entries if ("customer", "ok, obrigado") in entries else None

    shown = await eventually(transcribed, what="the answer to the notice in the transcript")
    # Ordered by when the gateway accepted it, not by Meta's whole second (which is before the notice).
    assert shown == [("customer", ASK), ("system", NOTICE), ("customer", "ok, obrigado")]


async def test_after_resolve_the_bot_answers_again_after_the_closing_message(
    platform: Platform, agent: AgentApi, database: AsyncEngine, keys_store: Redis, js: JetStreamContext
) -> None:
    asked, conversation = await asks_for_a_person(platform, agent)
    await all_forwarded(database, platform, [asked])

    resolved = await agent.resolve(conversation["id"], CLOSING)

    assert (resolved["status"], resolved["resolved_by"]) == ("resolved", agent.email)
    assert await keys_store.get(ContactKeys(platform.tenant.name, CUSTOMER).owner) is None
    question = await platform.say(CUSTOMER, "what is the price?")
    assert await platform.wait_for_texts(CUSTOMER, 3) == [NOTICE, CLOSING, "It costs $10."]
    [*_, turn] = await turns_covering(js, platform.tenant.name, CUSTOMER, [question])
    assert (turn.outcome, turn.rule) == ("rule", "prices")
    # The bot's answer opened nothing again: the one handoff is resolved.
    assert [h.status for h in await handoffs_of(database, platform.tenant.name, CUSTOMER)] == ["resolved"]


async def test_the_notice_does_not_wait_for_the_recorder(
    core: CoreSettings, registry: TenantRegistry, database: AsyncEngine, js: JetStreamContext
) -> None:
    # No recorder: as when it is behind or its database is away ("a database outage only delays the store").
    async with running_platform(core, registry, spec=HANDOFF_SPEC, handoff={}) as platform:
        asked = await platform.say(CUSTOMER, ASK)
        # The request is handled: the conversation queued with the customer's message, which opens their window.
        assert await all_forwarded(database, platform, [asked]) == [asked]
        await eventually(lambda: consumers_settled(js), what="the request and its commands handled")

        # The request's own message opened the customer's window; the recorder's view is not needed.
        assert await platform.texts_to(CUSTOMER) == [NOTICE]


# --- the other ways a conversation goes to a person ---


async def queued_reason(database: AsyncEngine, platform: Platform) -> tuple[str, str | None]:
    async def one() -> tuple[str, str | None] | None:
        found = await handoffs_of(database, platform.tenant.name, CUSTOMER)
        return (found[0].reason, found[0].detail) if found else None

    return await eventually(one, what="a handoff in the store")


async def test_a_rule_with_handoff_fires_by_its_button(
    core: CoreSettings, registry: TenantRegistry, database: AsyncEngine
) -> None:
    rules = [{"name": "talk-to-us", "match": {"buttonIds": ["talk"]}, "handoff": True}]
    bot: dict[str, Any] = {"greeting": {"text": "Olá!"}, "rules": rules, "fallback": {"text": FALLBACK}}
    async with running_platform(core, registry, spec=HANDOFF_SPEC, record=True, handoff={}, **bot) as platform:
        answer = await platform.sandbox.post(
            "/sandbox/chat/send",
            json={
                "phone_number_id": platform.number,
                "from": CUSTOMER,
                "reply": {"kind": "button_reply", "id": "talk", "title": "Talk to us"},
            },
        )
        assert answer.json()["gateway_status"] == 200

        assert await queued_reason(database, platform) == ("rule", "talk-to-us")
        assert await platform.wait_for_texts(CUSTOMER, 1) == [NOTICE]


async def test_the_faq_responder_missing_twice_in_a_row_hands_over(
    core: CoreSettings, registry: TenantRegistry, database: AsyncEngine, nc: NATS
) -> None:
    spec = {"handoff": {"notice": NOTICE, "afterFaqMisses": 2}}
    bot: dict[str, Any] = {"responder": "faq", "fallback": {"text": FALLBACK}}
    nothing = SearchReply(mode="hybrid", language=None, hits=[])
    async with (
        running_platform(core, registry, spec=spec, record=True, handoff={}, **bot) as platform,
        knowledge_stand_in(nc, platform.tenant.name, nothing) as knowledge,
    ):
        await platform.say(CUSTOMER, "vocês vendem geladeira?")
        assert await platform.wait_for_texts(CUSTOMER, 1) == [FALLBACK]
        await platform.say(CUSTOMER, "e fogão?")

        assert await queued_reason(database, platform) == ("faq_misses", "2")
        assert await platform.wait_for_texts(CUSTOMER, 2) == [FALLBACK, NOTICE]
        assert len(knowledge.requests) == 2


class FailingResponder:
    """A responder that always fails the way responders do: the fallback, outcome error_fallback."""

    name = "rules"

    async def answer(self, turn: TurnInput) -> Answer:
        return Answer("error_fallback", (ReplySpec(text=FALLBACK),))


async def test_a_responder_failing_twice_in_a_row_hands_over(
    core: CoreSettings, registry: TenantRegistry, database: AsyncEngine
) -> None:
    spec = {"handoff": {"notice": NOTICE, "afterFailures": 2}}
    async with running_platform(
        core, registry, spec=spec, record=True, handoff={}, responders={"rules": FailingResponder()}
    ) as platform:
        await platform.say(CUSTOMER, "olá")
        assert await platform.wait_for_texts(CUSTOMER, 1) == [FALLBACK]
        await platform.say(CUSTOMER, "alô?")

        assert await queued_reason(database, platform) == ("responder_failures", "2")
        assert await platform.wait_for_texts(CUSTOMER, 2) == [FALLBACK, NOTICE]


def openai_bot(base_url: str) -> dict[str, Any]:
    return {
        "responder": "openai",
        "openai": {"baseUrl": f"{base_url}/v1", "model": "local", "historyTurns": 0},
        "fallback": {"text": FALLBACK},
    }


async def test_the_model_s_handoff_tool_hands_over_and_its_words_are_not_sent(
    core: CoreSettings, registry: TenantRegistry, database: AsyncEngine
) -> None:
    fake = FakeOpenAI()
    fake.script(ToolCall("handoff_to_human", {"reason": "wants a refund"}), Text("A person will take over."))
    async with (
        serve(fake.app()) as llm,
        running_platform(core, registry, spec=HANDOFF_SPEC, record=True, handoff={}, **openai_bot(llm)) as platform,
    ):
        await platform.say(CUSTOMER, "I was charged twice")

        assert await queued_reason(database, platform) == ("llm", "wants a refund")
        assert await platform.wait_for_texts(CUSTOMER, 1) == [NOTICE]
        # The model was asked again with the tool's result; its words went nowhere, the notice replaced them.
        assert len(fake.requests) == 2


# --- humans win races ---


class BlockedResponder:
    """Answers only when the test releases it, so that an agent can take the conversation meanwhile."""

    name = "rules"

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def answer(self, turn: TurnInput) -> Answer:
        self.started.set()
        await asyncio.wait_for(self.release.wait(), timeout=20)
        return Answer("rule", (ReplySpec(text="the bot's late answer"),), rule="late")


async def read_receipts(platform: Platform) -> list[dict[str, Any]]:
    attempts = (await platform.sandbox.get("/sandbox/attempts")).json()["attempts"]
    return [a for a in attempts if (a["request"] or {}).get("status") == "read"]


async def test_an_agent_taking_the_conversation_while_the_bot_answers_wins(
    core: CoreSettings, registry: TenantRegistry, database: AsyncEngine, js: JetStreamContext
) -> None:
    responder = BlockedResponder()
    async with (
        running_platform(
            core, registry, spec=HANDOFF_SPEC, record=True, handoff={}, responders={"rules": responder}
        ) as platform,
        agent_api(database, platform.handoff_url, platform.tenant.name) as agent,
    ):
        tenant = platform.tenant.name
        question = await platform.say(CUSTOMER, "is my order late?")
        await asyncio.wait_for(responder.started.wait(), timeout=15)
        # The turn's read receipt went out before the take, so egress holds nothing of this turn.
        await eventually(lambda: read_receipts(platform), what="the turn's read receipt")

        taken = await agent.take(CUSTOMER)
        responder.release.set()

        assert (taken["status"], taken["reason"], taken["agent"]) == ("assigned", "agent_took", agent.email)
        # The engine saw the owner after the responder answered: the answer became a forward.
        assert await all_forwarded(database, platform, [question]) == [question]
        [turn] = await turns_covering(js, tenant, CUSTOMER, [question])
        assert (turn.outcome, list(turn.command_ids)) == ("forwarded", [])

        # A bot command published just before the take reaches egress after it: egress holds it.
        held = {"tenant": tenant, "result": "held_for_human"}
        held_before = REGISTRY.get_sample_value("zapflow_gateway_outbound_total", held) or 0.0
        late = outbound_pb2.OutboundCommand(
            command_id="late-turn:0",
            tenant=tenant,
            contact=CUSTOMER,
            turn_id="late-turn",
            created_at=bus.now_timestamp(),
            text=outbound_pb2.OutText(body="the bot's other late answer"),
        )
        await bus.publish(js, catalogue.outbound_subject(tenant, CUSTOMER), late, late.command_id)
        reply = await agent.reply(taken["id"], "Oi, aqui é a Ana. Vou verificar seu pedido.", "first")
        assert reply.status_code == 202, reply.text

        # Egress keeps each contact's order: the agent's reply went out after the bot's command was settled.
        assert await platform.wait_for_texts(CUSTOMER, 1) == ["Oi, aqui é a Ana. Vou verificar seu pedido."]
        assert REGISTRY.get_sample_value("zapflow_gateway_outbound_total", held) == held_before + 1
        assert await platform.texts_to(CUSTOMER) == ["Oi, aqui é a Ana. Vou verificar seu pedido."]
