"""A SIGKILL of the handoff service mid-conversation loses nothing and sends nothing twice (issue #11).

The handoff service runs as a process of its own; sandbox, gateway, conversation and recorder run in
the test's event loop. The customer has asked for a person and keeps writing while the agent replies
through the JSON API, retrying each reply with its Idempotency-Key until the service accepts it. The
handoff process is SIGKILLed while both are writing and started again at once; then the agent sends
every reply again with the same key, as a client that never saw the answers would. Once JetStream has
nothing left to deliver to the handoff service or to egress: every customer message is in the
handoff's forwarded events exactly once, no turn is forwarded twice, nothing was reopened, and the
sandbox received the notice once and each reply once, in the order the agent wrote them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.handoff import AgentApi, agent_api, consumers_settled, forwarded_events, handoffs_of
from tests.support.platform import Platform, eventually, running_platform
from tests.support.servers import free_port
from zapflow.handoff.settings import HandoffSettings
from zapflow.platform import catalogue, servers
from zapflow.platform.settings import CoreSettings
from zapflow.platform.supervisor import Supervised, settings_environment
from zapflow.store.engine import create_engine
from zapflow.store.models import HandoffEvent
from zapflow.tenants.registry import TenantRegistry

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.timeout(120)]

SEED = int(os.environ.get("ZAPFLOW_CHAOS_SEED", "20261125"))
CUSTOMER = "5511955554444"
NOTICE = "Um atendente vai falar com você por aqui."
CUSTOMER_MESSAGES = 16
AGENT_REPLIES = 6
# Short: most messages are a turn of their own, so that many forwarded events are on their way at the kill.
DEBOUNCE = {"windowMs": 50, "maxWaitMs": 200}
# The kill comes once the customer has sent this many messages, while the agent is replying too.
KILL_AFTER_MESSAGES = 5
# A handoff event the killed process held unacknowledged comes back after the consumer's ack wait.
SETTLE_TIMEOUT_S = catalogue.HANDOFF_EVENTS.ack_wait_s + 20.0
# Between two attempts of a reply the service did not accept (it was down).
RETRY_EVERY_S = 0.2
# Longer than the handoff service takes to start again (an interpreter, then every connection) on a loaded box.
REPLY_DEADLINE_S = 45.0


@dataclass
class Traffic:
    customer_wamids: list[str] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    # Attempts the agent's client made beyond the first, per reply: the service was down.
    retries: Counter[str] = field(default_factory=Counter)
    sent_while_down: int = 0
    down: bool = False
    kill_now: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class HandoffProcess:
    """`zapflow handoff` as a process of its own, ready when its /readyz answers."""

    supervised: Supervised
    url: str


@pytest.fixture
def handoff_process(core: CoreSettings, tmp_path: Path) -> Iterator[HandoffProcess]:
    port = free_port()
    settings = HandoffSettings.model_construct(core=core, sweep_interval_s=1.0)
    env = {**os.environ, **settings_environment(settings), "ZAPFLOW_LOG_LEVEL": "WARNING"}
    spec = servers.zapflow_service("handoff", "handoff", port, log=tmp_path / "handoff.log", env=env)
    process = HandoffProcess(Supervised(spec), f"http://127.0.0.1:{port}")
    yield process
    process.supervised.stop()


@pytest.fixture
async def database(core: CoreSettings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(core.database_url)
    yield engine
    await engine.dispose()


async def reply_until_accepted(agent: AgentApi, conversation_id: int, text: str, key: str, traffic: Traffic) -> None:
    """POST the reply until the service accepts it, with the same Idempotency-Key every time."""
    deadline = time.monotonic() + REPLY_DEADLINE_S
    while True:
        try:
            answer = await agent.reply(conversation_id, text, key)
        except httpx.TransportError:
            answer = None
        if answer is not None and answer.status_code == 202:
            return
        assert answer is None or answer.status_code >= 500, answer.text
        assert time.monotonic() < deadline, f"the reply {key} was never accepted"
        traffic.retries[key] += 1
        await asyncio.sleep(RETRY_EVERY_S)  # a client's retry interval


async def customer(platform: Platform, traffic: Traffic, rng: random.Random) -> None:
    for index in range(CUSTOMER_MESSAGES):
        traffic.customer_wamids.append(await platform.say(CUSTOMER, f"mensagem {index}"))
        traffic.sent_while_down += traffic.down
        if index + 1 == KILL_AFTER_MESSAGES:
            traffic.kill_now.set()
        await asyncio.sleep(rng.uniform(0.05, 0.3))  # the customer's typing pace


async def agent_replies(agent: AgentApi, conversation_id: int, traffic: Traffic, rng: random.Random) -> None:
    for index in range(1, AGENT_REPLIES):
        text = f"resposta {index} da Ana"
        await reply_until_accepted(agent, conversation_id, text, f"reply-{index}", traffic)
        traffic.replies.append(text)
        await asyncio.sleep(rng.uniform(0.3, 0.6))  # the agent's typing pace: some replies fall in the downtime


async def kill_and_restart(handoff: Supervised, traffic: Traffic, rng: random.Random) -> None:
    await traffic.kill_now.wait()
    # A moment after the message, while its turn is being forwarded and handled, or just after.
    await asyncio.sleep(rng.uniform(0.0, 0.15))
    handoff.kill()
    traffic.down = True
    try:
        await asyncio.to_thread(handoff.start)
    finally:
        traffic.down = False


async def test_a_sigkilled_handoff_service_loses_no_message_and_sends_no_reply_twice(
    core: CoreSettings,
    registry: TenantRegistry,
    handoff_process: HandoffProcess,
    database: AsyncEngine,
    js: JetStreamContext,
) -> None:
    rng = random.Random(SEED)
    spec = {"handoff": {"notice": NOTICE}}
    await asyncio.to_thread(handoff_process.supervised.start)
    async with running_platform(core, registry, debounce=DEBOUNCE, spec=spec, record=True) as platform:
        tenant = platform.tenant.name
        async with agent_api(database, handoff_process.url, tenant) as agent:
            asked = await platform.say(CUSTOMER, "quero falar com um atendente")
            assert await platform.wait_for_texts(CUSTOMER, 1) == [NOTICE]

            async def queued() -> dict[str, Any] | None:
                return await agent.conversation_of(CUSTOMER)

            conversation = await eventually(queued, what="the conversation in the queue")
            traffic = Traffic(replies=["resposta 0 da Ana"])
            await reply_until_accepted(agent, conversation["id"], traffic.replies[0], "reply-0", traffic)

            started = time.monotonic()
            await asyncio.gather(
                customer(platform, traffic, rng),
                agent_replies(agent, conversation["id"], traffic, rng),
                kill_and_restart(handoff_process.supervised, traffic, random.Random(SEED + 1)),
            )
            # A client that never saw the answers sends every reply again, with the same key.
            for index, text in enumerate(traffic.replies):
                answer = await agent.reply(conversation["id"], text, f"reply-{index}")
                assert answer.status_code == 202, answer.text

            sent = [asked, *traffic.customer_wamids]

            async def settled() -> bool:
                forwarded = {w for e in await forwarded_events(database, tenant, CUSTOMER) for w in e["wamids"]}
                texts = await platform.texts_to(CUSTOMER)
                return forwarded >= set(sent) and len(texts) >= 1 + AGENT_REPLIES and await consumers_settled(js)

            await eventually(settled, SETTLE_TIMEOUT_S, "every message forwarded and every reply sent")
            seconds = time.monotonic() - started

        events = await forwarded_events(database, tenant, CUSTOMER)
        texts = await platform.texts_to(CUSTOMER)
        figures = {
            "customer messages": len(sent),
            "sent while the handoff service was down": traffic.sent_while_down,
            "agent replies": len(traffic.replies),
            "reply attempts retried": sum(traffic.retries.values()),
            "forwarded events": len(events),
            # Recorded after a later turn's: the killed process held it, and it came back after the ack wait.
            "forwarded events recorded out of stream order": sum(
                1 for earlier, later in itertools.pairwise(events) if max(earlier["seqs"]) > min(later["seqs"])
            ),
            "seconds from the first message to settled": round(seconds, 1),
        }
        print("\nhandoff chaos figures:", json.dumps(figures, indent=2))

        # Nothing lost, nothing twice: each customer message reached the agent once, each turn once.
        forwarded = Counter(w for e in events for w in e["wamids"])
        assert set(forwarded) == set(sent)
        assert max(forwarded.values()) == 1, [w for w, n in forwarded.items() if n > 1]
        assert max(Counter(e["turn_id"] for e in events).values()) == 1
        # Each event's messages are in stream order, and the turns cover the customer's messages in order.
        by_seq = sorted((seq, w) for e in events for seq, w in zip(e["seqs"], e["wamids"], strict=True))
        assert [w for _, w in by_seq] == sent
        # The kill reopened nothing: one handoff, still waiting for the agent's resolve.
        [handoff] = await handoffs_of(database, tenant, CUSTOMER)
        assert (handoff.status, handoff.agent) == ("assigned", agent.email)
        # Nothing sent twice: the notice once, each reply once, in the order the agent wrote them.
        assert texts == [NOTICE, *traffic.replies]
        async with database.connect() as conn:
            logged = await conn.scalars(
                select(HandoffEvent.data).where(HandoffEvent.handoff_id == handoff.id, HandoffEvent.kind == "reply")
            )
            commands = Counter(data["command_id"] for data in logged)
        assert sorted(commands.values()) == [1] * AGENT_REPLIES
