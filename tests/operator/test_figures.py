"""A BotTenant's figures (agents, the latest turn, knowledge chunks): what is patched, and reading them for real."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.operator import test_operator_kmock
from tests.operator.test_operator_kmock import SECRETS, TENANTS, Cluster, secret, secret_refs
from tests.store.conversations import exchange
from tests.store.events import at
from tests.support.platform import eventually
from tests.support.tenants import tenant_document
from zapflow.handoff.accounts import Accounts
from zapflow.knowledge.messages import ListReply
from zapflow.operator.figures import FigureReader
from zapflow.operator.status import Figures, figures_patch
from zapflow.platform import catalogue
from zapflow.platform.settings import CoreSettings
from zapflow.store.engine import create_engine
from zapflow.store.repository import ConversationStore

# The operator running against kmock and a real nats-server, as in test_operator_kmock.
cluster = test_operator_kmock.cluster


@pytest.fixture
async def database(core: CoreSettings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(core.database_url)
    yield engine
    await engine.dispose()


def tenant_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def test_every_figure_read_is_patched_with_its_status_name() -> None:
    figures = Figures(agents=2, last_turn_at=datetime(2026, 11, 2, 12, 0, 5, 250_000, tzinfo=UTC), knowledge_chunks=7)

    assert figures_patch({}, figures) == {"agents": 2, "lastTurnAt": "2026-11-02T12:00:05Z", "knowledgeChunks": 7}


def test_only_changed_figures_are_patched() -> None:
    previous = {"agents": 2, "lastTurnAt": "2026-11-02T12:00:05Z", "knowledgeChunks": 7, "conditions": []}
    figures = Figures(agents=2, last_turn_at=datetime(2026, 11, 2, 12, 0, 5, tzinfo=UTC), knowledge_chunks=9)

    assert figures_patch(previous, figures) == {"knowledgeChunks": 9}


def test_a_figure_no_longer_read_is_removed_and_one_never_read_is_left_out() -> None:
    previous = {"agents": 2}

    assert figures_patch(previous, Figures()) == {"agents": None}
    assert figures_patch({}, Figures()) == {}


async def test_agents_and_the_latest_turn_come_from_the_database(nc: NATS, database: AsyncEngine) -> None:
    tenant = tenant_name()
    accounts = Accounts(database)
    await accounts.add(tenant, "ana@example.com", "Ana", "correct horse battery")
    await accounts.add(tenant, "bo@example.com", "Bo", "correct horse battery")
    await accounts.add(tenant_name(), "cy@example.com", "Cy", "correct horse battery")  # another tenant's
    store = ConversationStore(database)
    await exchange(store, f"{tenant}-a", 0, tenant=tenant)
    await exchange(store, f"{tenant}-b", 60, tenant=tenant)

    figures = await FigureReader(nc, database).read(tenant)

    assert figures.agents == 2
    assert figures.last_turn_at == at(60)


async def test_a_tenant_without_agents_or_turns_has_zero_agents_and_no_latest_turn(
    nc: NATS, database: AsyncEngine
) -> None:
    figures = await FigureReader(nc, database).read(tenant_name())

    assert figures.agents == 0
    assert figures.last_turn_at is None


async def test_knowledge_chunks_come_from_the_knowledge_service_over_nats(nc: NATS) -> None:
    tenant = tenant_name()
    listing = ListReply(documents=[], chunks=42, quota=1000, turns=0, model=None)

    async def answer(message: Msg) -> None:
        await message.respond(listing.model_dump_json().encode())

    subscription = await nc.subscribe(catalogue.knowledge_request_subject("list", tenant), cb=answer)
    try:
        figures = await FigureReader(nc, None).read(tenant)
    finally:
        await subscription.unsubscribe()

    assert figures.knowledge_chunks == 42


async def test_figures_that_cannot_be_read_are_absent(nc: NATS) -> None:
    # No database given, no knowledge service answering.
    assert await FigureReader(nc, None).read(tenant_name()) == Figures()


async def test_the_drift_timer_patches_the_figures_into_the_status(cluster: Cluster, database: AsyncEngine) -> None:
    document = secret_refs(tenant_document(), "creds")
    name = document["metadata"]["name"]
    await Accounts(database).add(name, "ana@example.com", "Ana", "correct horse battery")
    await cluster.create(SECRETS, secret("creds"))
    await cluster.create(TENANTS, document)

    async def status_with_agents() -> dict[str, object] | None:
        status = ((await cluster.fetch(f"{TENANTS}/{name}")) or {}).get("status") or {}
        return status if status.get("agents") == 1 else None

    status = await eventually(status_with_agents, timeout=20, what=f"status.agents of {name}")
    assert "knowledgeChunks" not in status  # no knowledge service runs here
    assert "lastTurnAt" not in status  # no turn yet
