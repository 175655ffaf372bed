"""The handoff service seen from a test: an agent with an API token, and what the store recorded about handoffs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from nats.js import JetStreamContext
from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncEngine

from zapflow.handoff.accounts import Accounts
from zapflow.platform import catalogue
from zapflow.store.models import Handoff, HandoffEvent

AGENT_PASSWORD = "a long enough password"


@dataclass
class AgentApi:
    """One agent of one tenant, calling the inbox's JSON API with a bearer token."""

    http: httpx.AsyncClient
    email: str

    async def conversations(self, state: str | None = None) -> list[dict[str, Any]]:
        answer = await self.http.get("/api/v1/conversations", params={"state": state} if state else {})
        assert answer.status_code == 200, answer.text
        return list(answer.json())

    async def conversation_of(self, contact: str) -> dict[str, Any] | None:
        """The contact's open conversation with a person, if it has one."""
        return next((c for c in await self.conversations() if c["contact"] == contact), None)

    async def read(self, conversation_id: int) -> dict[str, Any]:
        answer = await self.http.get(f"/api/v1/conversations/{conversation_id}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    async def take(self, phone: str) -> dict[str, Any]:
        answer = await self.http.post("/api/v1/conversations", json={"phone": phone})
        assert answer.status_code == 201, answer.text
        return dict(answer.json())

    async def reply(self, conversation_id: int, text: str, key: str | None = None) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key else {}
        return await self.http.post(
            f"/api/v1/conversations/{conversation_id}/messages", json={"text": text}, headers=headers
        )

    async def resolve(self, conversation_id: int, message: str | None = None) -> dict[str, Any]:
        answer = await self.http.post(f"/api/v1/conversations/{conversation_id}/resolve", json={"message": message})
        assert answer.status_code == 200, answer.text
        return dict(answer.json())


@contextlib.asynccontextmanager
async def agent_api(
    database: AsyncEngine, handoff_url: str, tenant: str, email: str = "ana@example.com"
) -> AsyncIterator[AgentApi]:
    """A new agent of the tenant (`zapflow agent add`, `zapflow agent token` without the CLI) and their client."""
    accounts = Accounts(database)
    await accounts.add(tenant, email, "Ana", AGENT_PASSWORD)
    token = await accounts.issue_token(tenant, email, "tests")
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=handoff_url, headers=headers, timeout=10) as http:
        yield AgentApi(http, email)


async def handoffs_of(database: AsyncEngine, tenant: str, contact: str) -> list[Row[Any]]:
    """Every handoff of the contact, oldest first."""
    async with database.connect() as conn:
        query = select(Handoff).where(Handoff.tenant == tenant, Handoff.contact == contact).order_by(Handoff.id)
        return list((await conn.execute(query)).all())


async def forwarded_events(database: AsyncEngine, tenant: str, contact: str) -> list[dict[str, Any]]:
    """The data of the contact's `forwarded` handoff events (turn_id, wamids, seqs), in the order they were recorded."""
    async with database.connect() as conn:
        query = (
            select(HandoffEvent.data)
            .where(HandoffEvent.tenant == tenant, HandoffEvent.contact == contact, HandoffEvent.kind == "forwarded")
            .order_by(HandoffEvent.id)
        )
        return [dict(data) for data in await conn.scalars(query)]


async def forwarded_wamids(database: AsyncEngine, tenant: str, contact: str) -> list[str]:
    """The wamids the handoff service recorded as reaching a person, in the order it recorded them."""
    return [wamid for data in await forwarded_events(database, tenant, contact) for wamid in data["wamids"]]


async def consumers_settled(js: JetStreamContext) -> bool:
    """The handoff service and egress have handled everything published so far: no delivery or redelivery is due."""
    for stream, durable in (
        (catalogue.EVENTS.name, catalogue.HANDOFF_EVENTS.durable),
        (catalogue.OUTBOUND.name, catalogue.EGRESS.durable),
    ):
        info = await js.consumer_info(stream, durable)
        if info.num_pending or info.num_ack_pending:
            return False
    return True
