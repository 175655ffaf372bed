"""A BotTenant's figures for its status, each read on its own: one that cannot be read is absent, not an error."""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client as NATS
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Select

from zapflow.knowledge.client import KnowledgeClient, KnowledgeError
from zapflow.operator.status import Figures
from zapflow.platform.logging import get_logger
from zapflow.store.models import Agent, Turn

log = get_logger(__name__)


class FigureReader:
    """Reads the figures: agents and the latest turn from the database, chunks from the knowledge service."""

    def __init__(self, nc: NATS, database: AsyncEngine | None) -> None:
        self._knowledge = KnowledgeClient(nc)
        self._database = database

    async def read(self, tenant: str) -> Figures:
        agents = await self._scalar(tenant, select(func.count()).select_from(Agent).where(Agent.tenant == tenant))
        last_turn_at = await self._scalar(tenant, select(func.max(Turn.created_at)).where(Turn.tenant == tenant))
        return Figures(agents=agents, last_turn_at=last_turn_at, knowledge_chunks=await self._chunks(tenant))

    async def _scalar(self, tenant: str, query: Select[Any]) -> Any:
        if self._database is None:
            return None  # the operator runs without a database (ZAPFLOW_OPERATOR_CANCEL_CAMPAIGNS=false)
        try:
            async with self._database.connect() as conn:
                return (await conn.execute(query)).scalar_one()
        except SQLAlchemyError as error:
            log.warning("cannot read a tenant figure from the database", tenant=tenant, error=repr(error))
            return None

    async def _chunks(self, tenant: str) -> int | None:
        try:
            return (await self._knowledge.list_documents(tenant)).chunks
        except KnowledgeError as error:
            log.warning("cannot read the tenant's knowledge chunks", tenant=tenant, error=str(error))
            return None
