"""The handoff suite's platform: one tenant whose conversations wait for a person, its agent, and an agent of a
second tenant in the same registry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.handoff import AgentApi, agent_api
from tests.support.platform import Platform, eventually, running_platform
from tests.support.tenants import make_tenant
from zapflow.platform.settings import CoreSettings
from zapflow.store.engine import create_engine
from zapflow.store.models import Contact, Handoff
from zapflow.tenants.model import BotTenant
from zapflow.tenants.registry import TenantRegistry

CUSTOMER = "5511955554444"
ASK = "quero falar com um atendente"
NOTICE = "Um atendente vai falar com você por aqui."
TEMPLATE = {"name": "retomar_conversa", "language": "pt_BR", "text": "Olá {{1}}, podemos continuar sobre {{2}}?"}
CANNED = {"shortcut": "bom-dia", "text": "Bom dia! Em que posso ajudar?"}
SPEC: dict[str, Any] = {
    "handoff": {
        "notice": NOTICE,
        "waitNotice": "",  # the same notice whether agents are online or not
        # No auto-assignment: a conversation waits in the queue until an agent claims it.
        "autoAssign": False,
        "templates": [TEMPLATE],
        "cannedResponses": [CANNED],
        "labels": ["pedido", "reclamação"],
    }
}


@pytest.fixture
async def database(core: CoreSettings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(core.database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def other_tenant(registry: TenantRegistry) -> BotTenant:
    """A second tenant in the same registry (it needs no number in the sandbox)."""
    tenant = make_tenant()
    await registry.put(tenant)
    return tenant


@pytest.fixture
async def platform(core: CoreSettings, registry: TenantRegistry, other_tenant: BotTenant) -> AsyncIterator[Platform]:
    async with running_platform(core, registry, spec=SPEC, record=True, handoff={}) as running:
        yield running


@pytest.fixture
async def agent(platform: Platform, database: AsyncEngine) -> AsyncIterator[AgentApi]:
    async with agent_api(database, platform.handoff_url, platform.tenant.name) as api:
        yield api


@pytest.fixture
async def stranger(platform: Platform, database: AsyncEngine, other_tenant: BotTenant) -> AsyncIterator[AgentApi]:
    """An agent of the other tenant, with a token of their own."""
    async with agent_api(database, platform.handoff_url, other_tenant.name, "bruno@example.com") as api:
        yield api


async def waiting_conversation(agent: AgentApi) -> dict[str, Any]:
    """The customer's conversation, once it waits in the agent's queue."""

    async def waiting() -> dict[str, Any] | None:
        return next((c for c in await agent.conversations("waiting") if c["contact"] == CUSTOMER), None)

    return await eventually(waiting, what="the conversation waiting in the queue")


async def recorded(agent: AgentApi, conversation_id: int, text: str) -> None:
    """Wait until the recorder stored the customer's message (it moves the customer's window)."""

    async def stored() -> bool:
        detail = await agent.read(conversation_id)
        return any(e["role"] == "customer" and e["text"] == text for e in detail["transcript"])

    await eventually(stored, what=f"the recorder storing {text!r}")


async def close_window(database: AsyncEngine, tenant: str) -> None:
    """The customer last wrote 25 hours ago, as far as the handoff and the recorder's contact row know."""
    long_ago = datetime.now(UTC) - timedelta(hours=25)
    async with database.begin() as conn:
        await conn.execute(
            update(Handoff)
            .where(Handoff.tenant == tenant, Handoff.contact == CUSTOMER)
            .values(last_customer_at=long_ago)
        )
        await conn.execute(
            update(Contact)
            .where(Contact.tenant == tenant, Contact.wa_id == CUSTOMER)
            .values(last_customer_message_at=long_ago)
        )


async def sent_of_type(platform: Platform, kind: str) -> list[dict[str, Any]]:
    """The payloads of this kind the sandbox accepted for the customer (`texts_to` reads text and buttons only)."""
    return [m["payload"] for m in await platform.sent_to(CUSTOMER) if m["payload"]["type"] == kind]
