"""I1–I4 under faults: two conversation replicas, duplicate webhooks, bursts, and SIGKILLs.

200 contacts send 2,000 messages in random bursts through signed webhooks, 10% of them
delivered twice; a conversation process is SIGKILLed three times and the gateway once, at
random moments, and restarted. Afterwards every message must be in exactly one answered turn,
every turn must have exactly one send at the sandbox, and every contact's replies must be in
order. The test prints the figures it checked.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from nats.js import JetStreamContext

from tests.support import meta
from tests.support.servers import ManagedServer, free_port
from tests.support.tenants import tenant_document
from zapflow.platform import catalogue
from zapflow.v1 import turn_pb2

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CONTACTS = 200
MESSAGES_PER_CONTACT = 10
DUPLICATE_RATE = 0.10
SEED = int(os.environ.get("ZAPFLOW_CHAOS_SEED", "20261125"))


@dataclass
class Stack:
    gateway: ManagedServer
    conversations: list[ManagedServer]
    sandbox: ManagedServer
    tenant: dict[str, Any]
    kills: list[str] = field(default_factory=list)

    @property
    def webhook(self) -> str:
        return f"{self.gateway.url}/webhook/whatsapp"

    @property
    def sandbox_url(self) -> str:
        return self.sandbox.url


@pytest.fixture
def stack(nats: ManagedServer, redis: ManagedServer, tmp_path: Path) -> Iterator[Stack]:
    sandbox_port, gateway_port = free_port(), free_port()
    document = tenant_document(
        f"http://127.0.0.1:{sandbox_port}",
        messages_per_second=1000,
        debounce={"windowMs": 400, "maxWaitMs": 1500},
        rules=[],
        fallback={"text": "ok"},
        quoteAfterMessages=1,  # every reply quotes its turn's last message: replies map to turns
        typingIndicator=False,
    )
    tenant_file = tmp_path / "tenant.yaml"
    tenant_file.write_text(yaml.safe_dump(document))
    env = {
        **os.environ,
        "ZAPFLOW_NATS_URL": nats.url,
        "ZAPFLOW_REDIS_URL": f"{redis.url}/0",
        "ZAPFLOW_LOG_LEVEL": "WARNING",
        "ZAPFLOW_SANDBOX_STATUSES": "off",
        # Short leases so that the work of a killed process is taken over within seconds.
        "ZAPFLOW_GATEWAY_EGRESS_ACK_WAIT_S": "4",
        "ZAPFLOW_GATEWAY_SEND_LEASE_S": "4",
        "ZAPFLOW_CONVERSATION_ACK_WAIT_S": "5",
        "ZAPFLOW_CONVERSATION_TURN_LEASE_S": "2",
        # Rules only: no history, so no relational store in this test.
        "ZAPFLOW_CONVERSATION_HISTORY_FROM_STORE": "false",
    }
    applied = subprocess.run(
        [sys.executable, "-m", "zapflow", "tenant", "apply", "-f", str(tenant_file)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr

    def service(name: str, port: int, *args: str) -> ManagedServer:
        command = [
            sys.executable,
            "-m",
            "zapflow",
            name.split("-")[0],
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *args,
        ]
        return ManagedServer(name, "http", command, port, env=env, log=tmp_path / f"{name}.log")

    sandbox = service(
        "sandbox",
        sandbox_port,
        "--webhook-url",
        f"http://127.0.0.1:{gateway_port}/webhook/whatsapp",
        "-f",
        str(tenant_file),
    )
    gateway = service("gateway", gateway_port)
    conversations = [service(f"conversation-{i}", free_port()) for i in range(2)]
    running = Stack(gateway, conversations, sandbox, document)
    for process in (sandbox, gateway, *conversations):
        process.start()
    try:
        yield running
    finally:
        for process in (*conversations, gateway, sandbox):
            process.stop()


def burst_plan(rng: random.Random) -> list[list[int]]:
    """Split a contact's messages into random bursts of 1 to 4."""
    bursts, left = [], MESSAGES_PER_CONTACT
    while left:
        size = min(left, rng.randint(1, 4))
        bursts.append(size)
        left -= size
    indexes = iter(range(MESSAGES_PER_CONTACT))
    return [[next(indexes) for _ in range(size)] for size in bursts]


async def deliver(client: httpx.AsyncClient, stack: Stack, body: bytes, headers: dict[str, str]) -> int:
    """POST a webhook as Meta does: retry until a 200, whatever went wrong."""
    attempts = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        attempts += 1
        try:
            answer = await client.post(stack.webhook, content=body, headers=headers)
            if answer.status_code == 200:
                return attempts
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.2)  # Meta's retry interval, compressed
    raise AssertionError("a webhook was never accepted")


async def customer(
    client: httpx.AsyncClient, stack: Stack, contact: str, rng: random.Random, sent: list[str], retries: Counter[str]
) -> None:
    number = stack.tenant["spec"]["whatsapp"]["phoneNumberId"]
    app_secret = stack.tenant["spec"]["whatsapp"]["appSecret"]["value"]
    await asyncio.sleep(rng.uniform(0, 6))  # customers start at different moments
    duplicates = []
    for burst in burst_plan(rng):
        for index in burst:
            message = meta.text(contact, f"message {index} from {contact}")
            body, headers = meta.signed(meta.notification(number, [message]), app_secret)
            attempts = await deliver(client, stack, body, headers)
            retries["webhook attempts"] += attempts
            sent.append(message["id"])
            if rng.random() < DUPLICATE_RATE:
                duplicates.append((rng.uniform(0, 3), body, headers))
            await asyncio.sleep(rng.uniform(0.02, 0.15))  # typing speed inside a burst
        await asyncio.sleep(rng.uniform(0.7, 1.5))  # a pause longer than the debounce window
    for delay, body, headers in duplicates:
        await asyncio.sleep(delay)
        retries["duplicate deliveries"] += 1
        await deliver(client, stack, body, headers)


async def chaos_monkey(stack: Stack, rng: random.Random) -> None:
    """SIGKILL a conversation replica three times and the gateway once, at random moments."""
    victims = [stack.conversations[0], stack.conversations[1], stack.conversations[0], stack.gateway]
    rng.shuffle(victims)
    moments = sorted(rng.uniform(1.0, 9.0) for _ in victims)
    started = time.monotonic()
    for victim, moment in zip(victims, moments, strict=True):
        await asyncio.sleep(max(0.0, moment - (time.monotonic() - started)))
        victim.kill()
        stack.kills.append(f"{victim.name}@{moment:.1f}s")
        await asyncio.to_thread(victim.start)


async def all_turns(js: JetStreamContext, tenant: str) -> list[turn_pb2.Turn]:
    subscription = await js.subscribe(
        catalogue.events_of(catalogue.TURN, tenant), stream=catalogue.EVENTS.name, ordered_consumer=True
    )
    info = await js.stream_info(catalogue.EVENTS.name, subjects_filter=catalogue.events_of(catalogue.TURN, tenant))
    turns = []
    for _ in range(sum((info.state.subjects or {}).values())):
        turns.append(turn_pb2.Turn.FromString((await subscription.next_msg(timeout=10)).data))
    await subscription.unsubscribe()
    return turns


async def test_no_loss_no_duplicate_reply_in_order_under_sigkill(stack: Stack, js: JetStreamContext) -> None:
    contacts = [f"55119{i:08d}" for i in range(CONTACTS)]
    sent: list[str] = []
    retries: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        started = time.monotonic()
        await asyncio.gather(
            chaos_monkey(stack, random.Random(SEED + 1)),
            *(customer(client, stack, c, random.Random(f"{SEED}-{c}"), sent, retries) for c in contacts),
        )
        send_seconds = time.monotonic() - started

        tenant = stack.tenant["metadata"]["name"]
        deadline = time.monotonic() + 120
        while True:  # wait for the system to settle: every message in a turn, every turn sent
            turns = {t.turn_id: t for t in await all_turns(js, tenant)}
            answered = {w for t in turns.values() for w in t.inbound_wamids}
            sends = (await client.get(f"{stack.sandbox_url}/sandbox/messages")).json()["messages"]
            if answered >= set(sent) and len(sends) >= len(turns):
                break
            assert time.monotonic() < deadline, (
                f"not settled: {len(set(sent) - answered)} messages unanswered, {len(sends)}/{len(turns)} turns sent"
            )
            await asyncio.sleep(0.5)  # polling the system's own records until it settles

    # I1 and I4: every message in exactly one answered turn.
    in_turns = Counter(w for t in turns.values() for w in t.inbound_wamids)
    assert len(sent) == CONTACTS * MESSAGES_PER_CONTACT
    assert set(in_turns) == set(sent)
    assert max(in_turns.values()) == 1, [w for w, n in in_turns.items() if n > 1][:5]
    # I2: exactly one send per turn, none unexplained.
    last_wamid = {t.inbound_wamids[-1]: t for t in turns.values()}
    sends_per_turn = Counter(last_wamid[m["payload"]["context"]["message_id"]].turn_id for m in sends)
    assert set(sends_per_turn) == set(turns)
    assert max(sends_per_turn.values()) == 1
    # I3: each contact's turns are disjoint, in stream order, and its replies arrive in that order.
    by_contact: dict[str, list[turn_pb2.Turn]] = defaultdict(list)
    for message in sends:
        by_contact[message["to"]].append(last_wamid[message["payload"]["context"]["message_id"]])
    for contact, replies in by_contact.items():
        seqs = [t.last_inbound_seq for t in replies]
        assert seqs == sorted(seqs), f"replies to {contact} out of order"
        for earlier, later in itertools.pairwise(replies):
            assert earlier.last_inbound_seq < min(later.inbound_seqs)

    merged = Counter(len(t.inbound_wamids) for t in turns.values())
    figures = {
        "contacts": CONTACTS,
        "messages": len(sent),
        "duplicate deliveries": retries["duplicate deliveries"],
        "webhook attempts (Meta retries included)": retries["webhook attempts"],
        "kills": stack.kills,
        "turns": len(turns),
        "messages per turn": dict(sorted(merged.items())),
        "sends at the sandbox": len(sends),
        "duplicate wamids dropped by the engine": sum(len(t.duplicate_wamids) for t in turns.values()),
        "send phase seconds": round(send_seconds, 1),
    }
    print("\nchaos figures:", json.dumps(figures, indent=2))
