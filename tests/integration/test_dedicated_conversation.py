"""A tenant with conversation replicas of its own: its turns run there alone, and changing sides loses nothing.

The due-set choice and the Redis scripts against a real redis-server; then a shared and a dedicated
conversation service side by side on a real nats-server and redis-server, behind the gateway and the
sandbox, each answering with its own name so that a reply says which one ran the turn.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from pydantic import ValidationError
from redis.asyncio import Redis

from tests.support.cli import cli_environment, run_zapflow
from tests.support.http import bound_socket, serve
from tests.support.platform import eventually, register_number
from tests.support.servers import ManagedServer
from tests.support.tenants import make_tenant, tenant_document
from tests.support.turns import turns_covering
from zapflow.conversation import turnstate
from zapflow.conversation.app import conversation_service
from zapflow.conversation.history import HistoryCache
from zapflow.conversation.responder import Answer, TurnInput
from zapflow.conversation.settings import ConversationSettings
from zapflow.conversation.turnstate import DueSets, TurnState, read_by
from zapflow.gateway.app import GATEWAY
from zapflow.gateway.settings import GatewaySettings
from zapflow.operator import children
from zapflow.platform import bus, catalogue
from zapflow.platform.keys import DUE, ContactKeys, tenant_due_key
from zapflow.platform.service import create_app
from zapflow.platform.settings import CoreSettings
from zapflow.privacy.erasure import Eraser
from zapflow.sandbox.app import sandbox_service
from zapflow.sandbox.settings import SandboxSettings
from zapflow.store.engine import create_engine
from zapflow.tenants.files import parse_tenant
from zapflow.tenants.model import BotTenant, DebounceSpec, ReplySpec
from zapflow.tenants.registry import TenantRegistry

pytestmark = pytest.mark.timeout(180)

DEBOUNCE = {"windowMs": 300, "maxWaitMs": 2000}
BOT: dict[str, Any] = {"rules": [], "fallback": {"text": "unused: the test's responders answer"}}
OPERATOR_UID = "0b7c1a52-6f1e-4f63-9d0c-3c1f0c0ffee0"


def dedicated_tenant(graph_api_url: str, dedicated: bool = True, uid: str | None = OPERATOR_UID) -> dict[str, Any]:
    """A tenant document asking for a workload of its own; with a uid, as the operator writes it."""
    document = tenant_document(graph_api_url, debounce=DEBOUNCE, spec={"scaling": {"dedicated": dedicated}}, **BOT)
    if uid is not None:
        document["metadata"] |= {"namespace": "tenants", "uid": uid}
    return document


# --- which due set: decided in one place ---


def test_only_an_operator_written_tenant_asking_for_it_is_served_by_a_dedicated_workload() -> None:
    assert parse_tenant(dedicated_tenant("http://127.0.0.1:9")).served_by_dedicated_workload
    assert not parse_tenant(dedicated_tenant("http://127.0.0.1:9", uid=None)).served_by_dedicated_workload
    assert not parse_tenant(dedicated_tenant("http://127.0.0.1:9", dedicated=False)).served_by_dedicated_workload
    assert parse_tenant(dedicated_tenant("http://127.0.0.1:9")).owner_uid == OPERATOR_UID
    assert parse_tenant(dedicated_tenant("http://127.0.0.1:9", uid=None)).owner_uid is None


def test_a_dedicated_tenant_has_a_due_set_of_its_own_and_its_replicas_read_only_that() -> None:
    own = tenant_due_key("acme")
    assert DueSets.of("acme", dedicated=True) == DueSets(own, DUE)
    assert DueSets.of("acme", dedicated=False) == DueSets(DUE, own)
    assert own != tenant_due_key("acme-2") and own.startswith(DUE.split(":")[0] + ":acme:")
    assert read_by("acme") == own
    assert read_by(None) == DUE


def test_the_dedicated_tenant_setting_is_a_dns_label_read_from_the_variable_the_operator_sets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert ConversationSettings().dedicated_tenant is None
    monkeypatch.setenv(children.DEDICATED_TENANT_ENV, "acme-2")
    assert ConversationSettings().dedicated_tenant == "acme-2"
    with pytest.raises(ValidationError, match="is not a DNS label"):
        ConversationSettings(dedicated_tenant="Acme.Corp")


def test_the_dedicated_consumer_takes_its_tenants_new_messages_only() -> None:
    consumer = catalogue.dedicated_conversation_consumer("acme")
    config = consumer.config()
    assert config.durable_name == "conversation-acme"
    assert config.deliver_policy == DeliverPolicy.NEW
    assert catalogue.CONVERSATION_INBOUND.config().deliver_policy == DeliverPolicy.ALL
    assert config.filter_subject is not None
    prefix = config.filter_subject.removesuffix(">")
    assert catalogue.inbound_subject("acme", "5511").startswith(prefix)
    assert not catalogue.inbound_subject("acme-2", "5511").startswith(prefix)


# --- the scripts, on a real redis-server ---


@pytest.fixture
async def state(redis: ManagedServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(f"{redis.url}/0", decode_responses=True)
    yield client
    await client.aclose()


def turn_state(client: Redis, dedicated_tenant: str | None = None) -> TurnState:
    return TurnState(client, HistoryCache(client, None, 50, 3600), read_by(dedicated_tenant))


async def due_in(client: Redis, keys: ContactKeys) -> dict[str, float]:
    """The due sets holding the contact, with its deadline in each."""
    found = {}
    for due_set in (DUE, tenant_due_key(keys.tenant)):
        score = await client.zscore(due_set, keys.due_member)
        if score is not None:
            found[due_set] = score
    return found


async def test_arrivals_and_turns_keep_a_contact_in_the_due_set_its_tenant_uses_now(state: Redis) -> None:
    keys = ContactKeys("acme", "5511900000001")
    dedicated, shared = DueSets.of("acme", True), DueSets.of("acme", False)
    turns = turn_state(state)
    debounce = DebounceSpec(window_ms=60_000, max_wait_ms=120_000)
    await state.hset(keys.conversation, "cursor", 0)

    assert await turns.arrive(keys, dedicated, "wamid.1", 1, int(time.time()), debounce, 60) == "pending"
    assert set(await due_in(state, keys)) == {dedicated.key}
    # The tenant stopped being dedicated: the next arrival moves the contact, in the same script.
    assert await turns.arrive(keys, shared, "wamid.2", 2, int(time.time()), debounce, 60) == "pending"
    assert set(await due_in(state, keys)) == {DUE}

    # A turn settling the first message only keeps the contact due (message 2 waits), where the tenant says now.
    await state.set(keys.lock, "token")
    await turns.settle(keys, "token", 1, None, debounce, dedicated)
    assert set(await due_in(state, keys)) == {dedicated.key}
    # Settling everything takes it out of both.
    await state.zadd(DUE, {keys.due_member: 1})  # a replica with an older view of the registry put it here too
    await turns.settle(keys, "token", 2, None, debounce, shared)
    assert await due_in(state, keys) == {}
    assert await turns.cursor(keys) == 2


async def test_a_closer_reads_and_postpones_only_its_own_due_set(state: Redis) -> None:
    mine, theirs = ContactKeys("acme", "5511900000001"), ContactKeys("globex", "5511900000002")
    await state.zadd(tenant_due_key("acme"), {mine.due_member: 1})
    await state.zadd(DUE, {theirs.due_member: 1})
    dedicated, shared = turn_state(state, "acme"), turn_state(state)

    assert await dedicated.due(now_ms=10, limit=10) == [mine]
    assert await shared.due(now_ms=10, limit=10) == [theirs]
    await dedicated.postpone([mine, theirs], until_ms=50)
    assert await due_in(state, mine) == {tenant_due_key("acme"): 50}
    assert await due_in(state, theirs) == {DUE: 1}


async def test_rearming_held_contacts_leaves_a_deadline_alone_in_either_set(state: Redis) -> None:
    waiting, lost = ContactKeys("acme", "5511900000001"), ContactKeys("acme", "5511900000002")
    await state.zadd(DUE, {waiting.due_member: 99_999})  # due before the tenant became dedicated
    await turn_state(state).rearm({DueSets.of("acme", True): [waiting, lost]}, now_ms=1_000)
    assert await due_in(state, waiting) == {DUE: 99_999}
    assert await due_in(state, lost) == {tenant_due_key("acme"): 1_000}


async def test_moving_a_due_set_to_the_shared_one_keeps_the_earlier_deadline_and_empties_it(
    state: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(turnstate, "MOVE_BATCH", 2)  # several runs of the script for five contacts
    contacts = [ContactKeys("acme", f"55119000000{i:02}") for i in range(5)]
    await state.zadd(tenant_due_key("acme"), {keys.due_member: 1_000 + i for i, keys in enumerate(contacts)})
    # Contacts due in both sets: one earlier in the shared set, one later.
    await state.zadd(DUE, {contacts[0].due_member: 500, contacts[1].due_member: 5_000})
    other = ContactKeys("globex", "5511900000099")
    await state.zadd(tenant_due_key("globex"), {other.due_member: 7})

    assert await turn_state(state).move_to_shared(["acme", "nobody"]) == 5
    assert not await state.exists(tenant_due_key("acme"))
    assert [await due_in(state, keys) for keys in contacts] == [
        {DUE: 500},
        {DUE: 1_001},
        {DUE: 1_002},
        {DUE: 1_003},
        {DUE: 1_004},
    ]
    assert await due_in(state, other) == {tenant_due_key("globex"): 7}  # not asked for: untouched
    assert await turn_state(state).move_to_shared(["acme"]) == 0


async def test_erasing_a_contact_takes_it_out_of_both_due_sets(
    core: CoreSettings, js: JetStreamContext, state: Redis, tmp_path: Path
) -> None:
    await bus.ensure_streams(js, catalogue.ALL_STREAMS)
    forgotten, kept = ContactKeys("acme", "5511900000001"), ContactKeys("acme", "5511900000002")
    for due_set in (DUE, tenant_due_key("acme")):
        await state.zadd(due_set, {forgotten.due_member: 1, kept.due_member: 2})
    engine = create_engine(core.database_url)
    try:
        await Eraser(engine, state, js, tmp_path / "analytics.duckdb", "secret").erase("acme", forgotten.contact, "cli")
    finally:
        await engine.dispose()
    assert await due_in(state, forgotten) == {}
    assert await due_in(state, kept) == {DUE: 2, tenant_due_key("acme"): 2}


async def test_a_shared_replica_moves_entries_written_late_into_an_undedicated_tenants_set(
    core: CoreSettings, registry: TenantRegistry, state: Redis
) -> None:
    tenant = make_tenant(debounce=DEBOUNCE, **BOT)
    await registry.put(tenant)
    late = ContactKeys(tenant.name, "5511900000001")
    deadline = int(time.time() * 1000) + 3_600_000  # far off: the closer leaves it be once moved
    settings = ConversationSettings(core=core, dedicated_sweep_interval_s=0.2)
    async with serve(create_app(conversation_service(), settings)):
        # After the replica started, and with no registry change since: only the periodic sweep finds it.
        await state.zadd(tenant_due_key(tenant.name), {late.due_member: deadline})

        async def moved() -> bool:
            return await due_in(state, late) == {DUE: deadline}

        await eventually(moved, timeout=15, what="the late entry to be moved into the shared due set")


# --- a shared and a dedicated replica side by side ---


@dataclass
class NamedResponder:
    """Answers with the name of the replica that asked it, and keeps who answered whom."""

    replica: str
    calls: list[tuple[str, str, str, tuple[str, ...]]]
    name: str = "rules"

    async def answer(self, turn: TurnInput) -> Answer:
        texts = tuple(message.text.body for message in turn.messages)
        self.calls.append((self.replica, turn.tenant.name, turn.contact, texts))
        return Answer("rule", (ReplySpec(text=f"{self.replica} replica"),))


@dataclass
class Stack:
    core: CoreSettings
    redis: Redis
    sandbox: httpx.AsyncClient
    gateway_socket: socket.socket
    calls: list[tuple[str, str, str, tuple[str, ...]]] = field(default_factory=list)

    async def say(self, tenant: BotTenant, customer: str, text: str) -> str:
        answer = await self.sandbox.post(
            "/sandbox/chat/send",
            json={"phone_number_id": tenant.spec.whatsapp.phone_number_id, "from": customer, "text": text},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["gateway_status"] == 200, answer.json()
        return str(answer.json()["wamid"])

    async def texts_to(self, tenant: BotTenant, customer: str) -> list[str]:
        number = tenant.spec.whatsapp.phone_number_id
        answer = await self.sandbox.get("/sandbox/messages", params={"phone_number_id": number, "to": customer})
        return [m["payload"]["text"]["body"] for m in answer.json()["messages"] if m["payload"]["type"] == "text"]

    async def wait_for_texts(self, tenant: BotTenant, customer: str, count: int) -> list[str]:
        async def enough() -> list[str] | None:
            texts = await self.texts_to(tenant, customer)
            return texts if len(texts) >= count else None

        return await eventually(enough, timeout=20, what=f"{count} replies to {customer}")

    async def wait_until_overdue(self, keys: ContactKeys) -> None:
        """The contact waits in its tenant's own due set, past its deadline: any closer reading it would have run it."""

        async def overdue() -> bool:
            found = await due_in(self.redis, keys)
            return set(found) == {tenant_due_key(keys.tenant)} and found[tenant_due_key(keys.tenant)] < (
                time.time() * 1000 - 200
            )

        await eventually(overdue, timeout=15, what=f"{keys.contact} to be overdue in its tenant's own due set")

    async def wait_until_settled(self, *contacts: ContactKeys) -> None:
        """Nothing pending anywhere for these contacts: no replica will take them again."""

        async def settled() -> bool:
            return all([await due_in(self.redis, keys) == {} for keys in contacts])

        await eventually(settled, timeout=15, what="every contact to be settled")

    def gateway(self) -> contextlib.AbstractAsyncContextManager[str]:
        """Started once the tenants are in the registry: it answers the webhooks of the tenants it knows."""
        return serve(create_app(GATEWAY, GatewaySettings(core=self.core)), sock=self.gateway_socket)

    def conversation(self, replica: str, **settings: Any) -> contextlib.AbstractAsyncContextManager[str]:
        responder = NamedResponder(replica, self.calls)
        service = conversation_service({"rules": responder})
        return serve(create_app(service, ConversationSettings(core=self.core, **settings)))


@contextlib.asynccontextmanager
async def sandbox_stack(core: CoreSettings) -> AsyncIterator[Stack]:
    gateway_socket = bound_socket()
    webhook = f"http://127.0.0.1:{gateway_socket.getsockname()[1]}/webhook/whatsapp"
    sandbox = SandboxSettings(webhook_url=webhook, statuses="off")
    async with (
        serve(create_app(sandbox_service(sandbox), sandbox)) as sandbox_url,
        httpx.AsyncClient(base_url=sandbox_url, timeout=10) as sandbox_client,
    ):
        client = Redis.from_url(core.redis_url, decode_responses=True)
        try:
            yield Stack(core, client, sandbox_client, gateway_socket)
        finally:
            await client.aclose()


async def test_a_dedicated_tenant_is_answered_by_its_own_replicas_and_by_the_shared_ones_once_it_is_not(
    core: CoreSettings, registry: TenantRegistry, js: JetStreamContext, nats: ManagedServer, tmp_path: Path
) -> None:
    async with sandbox_stack(core) as stack:
        graph_api = str(stack.sandbox.base_url).rstrip("/")
        acme_document = dedicated_tenant(graph_api)
        acme, other = parse_tenant(acme_document), make_tenant(graph_api, debounce=DEBOUNCE, **BOT)
        # A tenant file asking for a workload of its own gets none: a note, and the shared replicas answer it.
        file_document = dedicated_tenant(graph_api, uid=None)
        tenant_file = tmp_path / "tenant.yaml"
        tenant_file.write_text(yaml.safe_dump(file_document))
        applied = run_zapflow(cli_environment(ZAPFLOW_NATS_URL=nats.url), "tenant", "apply", "-f", str(tenant_file))
        assert applied.returncode == 0, applied.stderr
        assert "spec.scaling.dedicated has no effect on a tenant applied from a file" in applied.stdout
        from_file = parse_tenant(file_document)
        # As the operator does: the tenant's consumer exists before the registry says it is dedicated.
        await bus.ensure_streams(js, catalogue.ALL_STREAMS)
        consumer = catalogue.dedicated_conversation_consumer(acme.name)
        await js.add_consumer(consumer.stream.name, consumer.config())
        for tenant in (acme, other):
            await registry.put(tenant)
        for tenant in (acme, other, from_file):
            await register_number(stack.sandbox, tenant)
        alice, bob, carol = (
            ContactKeys(acme.name, "5511900000001"),
            ContactKeys(other.name, "5511900000002"),
            ContactKeys(from_file.name, "5511900000003"),
        )

        # Only the shared replica runs: the others' bursts are answered, acme's waits in its own due set.
        # (Its sweep runs at start and then not again here: only the registry's change moves acme's set.)
        async with stack.gateway(), stack.conversation("shared", dedicated_sweep_interval_s=600):
            acme_burst = [await stack.say(acme, alice.contact, f"acme {i}") for i in range(3)]
            other_burst = [await stack.say(other, bob.contact, f"other {i}") for i in range(3)]
            file_burst = [await stack.say(from_file, carol.contact, f"file {i}") for i in range(2)]
            assert await stack.wait_for_texts(other, bob.contact, 1) == ["shared replica"]
            assert await stack.wait_for_texts(from_file, carol.contact, 1) == ["shared replica"]
            await stack.wait_until_overdue(alice)
            assert await stack.texts_to(acme, alice.contact) == []
            assert [call for call in stack.calls if call[1] == acme.name] == []

            # Its own replica starts (on the consumer the operator made): it answers acme, once, in one turn.
            async with stack.conversation("dedicated", dedicated_tenant=acme.name):
                assert await stack.wait_for_texts(acme, alice.contact, 1) == ["dedicated replica"]
                (turn,) = await turns_covering(js, acme.name, alice.contact, acme_burst)
                assert list(turn.inbound_wamids) == acme_burst
                await stack.wait_until_settled(alice, bob, carol)
            info = await js.consumer_info(consumer.stream.name, consumer.durable)
            assert info.config.deliver_policy == DeliverPolicy.NEW

            assert sorted(stack.calls) == sorted(
                [
                    ("dedicated", acme.name, alice.contact, ("acme 0", "acme 1", "acme 2")),
                    ("shared", other.name, bob.contact, ("other 0", "other 1", "other 2")),
                    ("shared", from_file.name, carol.contact, ("file 0", "file 1")),
                ]
            )
            assert (await turns_covering(js, other.name, bob.contact, other_burst))[0].inbound_wamids == other_burst
            assert (await turns_covering(js, from_file.name, carol.contact, file_burst))[0].inbound_wamids == file_burst

            # Its replica gone, acme writes again: the message waits in acme's own set until acme is shared again.
            dave = ContactKeys(acme.name, "5511900000004")
            late = await stack.say(acme, dave.contact, "anyone there?")
            await stack.wait_until_overdue(dave)
            assert await stack.texts_to(acme, dave.contact) == []
            acme_document["spec"]["scaling"]["dedicated"] = False
            await registry.put(parse_tenant(acme_document))
            assert await stack.wait_for_texts(acme, dave.contact, 1) == ["shared replica"]
            await stack.wait_until_settled(dave)
            assert (await turns_covering(js, acme.name, dave.contact, [late]))[0].inbound_wamids == [late]
            assert [call for call in stack.calls if call[2] == dave.contact] == [
                ("shared", acme.name, dave.contact, ("anyone there?",))
            ]
            assert await stack.texts_to(acme, dave.contact) == ["shared replica"]
