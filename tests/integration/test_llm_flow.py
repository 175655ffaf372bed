"""The openai responder through the whole platform, against a local OpenAI-compatible server."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY
from redis.asyncio import Redis

from tests.support.http import serve
from tests.support.openai_server import NOT_JSON, FakeOpenAI, Hang
from tests.support.platform import eventually, running_platform
from zapflow.platform.keys import ContactKeys
from zapflow.platform.settings import CoreSettings
from zapflow.store.engine import create_engine
from zapflow.store.repository import ConversationStore
from zapflow.tenants.registry import TenantRegistry

CUSTOMER = "5511922221111"
FALLBACK = "Our assistant is busy, a person will answer soon."


def llm_bot(base_url: str, timeout: float = 5.0) -> dict[str, object]:
    return {
        "responder": "openai",
        "openai": {"baseUrl": f"{base_url}/v1", "model": "local", "timeoutSeconds": timeout, "historyTurns": 5},
        "fallback": {"text": FALLBACK},
    }


async def test_previous_turns_are_the_context_of_the_next(core: CoreSettings, registry: TenantRegistry) -> None:
    fake = FakeOpenAI()
    async with serve(fake.app()) as llm, running_platform(core, registry, **llm_bot(llm)) as platform:
        await platform.say(CUSTOMER, "my order is late")
        assert await platform.wait_for_texts(CUSTOMER, 1) == ["You said: my order is late"]
        await platform.say(CUSTOMER, "order 42")
        assert await platform.wait_for_texts(CUSTOMER, 2) == ["You said: my order is late", "You said: order 42"]

    second = fake.requests[1].messages
    assert second[1:] == [
        {"role": "user", "content": "my order is late"},
        {"role": "assistant", "content": "You said: my order is late"},
        {"role": "user", "content": "order 42"},
    ]


async def test_a_timeout_or_a_malformed_completion_gives_the_fallback(
    core: CoreSettings, registry: TenantRegistry
) -> None:
    release = asyncio.Event()
    fake = FakeOpenAI()
    fake.script(Hang(release), Hang(release), NOT_JSON)  # the client retries a timeout once
    # Two failures in a row would otherwise hand the customer to a person (test_handoff_flow.py covers that).
    no_handoff = {"handoff": {"afterFailures": 0}}
    async with (
        serve(fake.app()) as llm,
        running_platform(core, registry, spec=no_handoff, **llm_bot(llm, timeout=0.5)) as platform,
    ):
        errors = "zapflow_conversation_responder_errors_total"
        await platform.say(CUSTOMER, "are you there?")
        assert await platform.wait_for_texts(CUSTOMER, 1) == [FALLBACK]
        release.set()
        assert REGISTRY.get_sample_value(errors, {"tenant": platform.tenant.name, "kind": "timeout"}) == 1
        await platform.say(CUSTOMER, "hello?")
        assert await platform.wait_for_texts(CUSTOMER, 2) == [FALLBACK, FALLBACK]
        assert REGISTRY.get_sample_value(errors, {"tenant": platform.tenant.name, "kind": "malformed"}) == 1


async def test_history_comes_back_from_the_store_when_redis_lost_it(
    core: CoreSettings, registry: TenantRegistry
) -> None:
    fake = FakeOpenAI()
    async with serve(fake.app()) as llm, running_platform(core, registry, record=True, **llm_bot(llm)) as platform:
        await platform.say(CUSTOMER, "my order is late")
        assert await platform.wait_for_texts(CUSTOMER, 1) == ["You said: my order is late"]
        database = create_engine(core.database_url)
        store = ConversationStore(database)
        try:

            async def recorded() -> bool:
                return len(await store.history(platform.tenant.name, CUSTOMER, 5)) == 2

            await eventually(recorded, what="the first turn in the relational store")
        finally:
            await database.dispose()
        redis = Redis.from_url(core.redis_url)
        await redis.delete(ContactKeys(platform.tenant.name, CUSTOMER).history)  # Redis lost it
        await redis.aclose()

        await platform.say(CUSTOMER, "order 42")
        assert await platform.wait_for_texts(CUSTOMER, 2) == ["You said: my order is late", "You said: order 42"]

    assert fake.requests[1].messages[1:] == [
        {"role": "user", "content": "my order is late"},
        {"role": "assistant", "content": "You said: my order is late"},
        {"role": "user", "content": "order 42"},
    ]
