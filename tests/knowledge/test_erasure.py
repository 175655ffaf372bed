"""Turn vectors hold a customer's words: erasure and retention reach them like the messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from nats.js import JetStreamContext
from redis.asyncio import Redis
from sqlalchemy import func, select

from tests.knowledge.conftest import Embedding
from tests.support.platform import eventually, running_platform
from zapflow.knowledge.client import KnowledgeClient
from zapflow.knowledge.messages import SearchRequest
from zapflow.platform import bus, catalogue
from zapflow.platform.settings import CoreSettings
from zapflow.privacy.erasure import Eraser
from zapflow.store.engine import create_engine
from zapflow.store.lifecycle import delete_expired_conversations
from zapflow.store.models import TurnVector
from zapflow.tenants.model import DataSpec
from zapflow.tenants.registry import TenantRegistry

FORGOTTEN = "5511977770001"
KEPT = "5511977770002"


async def turn_rows(core: CoreSettings, contact: str | None = None) -> int:
    engine = create_engine(core.database_url)
    try:
        async with engine.connect() as conn:
            query = select(func.count()).select_from(TurnVector)
            if contact is not None:
                query = query.where(TurnVector.contact == contact)
            return int(await conn.scalar(query) or 0)
    finally:
        await engine.dispose()


async def test_erasing_a_contact_erases_their_turn_vectors_everywhere(
    core: CoreSettings,
    registry: TenantRegistry,
    js: JetStreamContext,
    knowledge: KnowledgeClient,
    embedding_service: Embedding,
    tmp_path: Path,
) -> None:
    async with embedding_service(backend="none"), running_platform(core, registry) as platform:
        tenant = platform.tenant.name
        await platform.say(FORGOTTEN, "my blender arrived broken, the jar is cracked")
        await platform.say(KEPT, "do you deliver blenders on saturday")

        async def both_indexed() -> bool | None:
            found = await knowledge.search(tenant, SearchRequest(text="blender", collection="turns", limit=10))
            return True if {hit.contact for hit in found.hits} == {FORGOTTEN, KEPT} else None

        await eventually(both_indexed, timeout=30, what="both customers' turns indexed")

        # The scheduler serves erasures and declares every stream; here the eraser stands alone.
        await bus.ensure_streams(js, catalogue.ALL_STREAMS)
        redis = Redis.from_url(core.redis_url)
        eraser = Eraser(create_engine(core.database_url), redis, js, tmp_path / "analytics.duckdb", "secret")
        try:
            record = await eraser.erase(tenant, FORGOTTEN, "cli")
        finally:
            await redis.aclose()
            await eraser.engine.dispose()

        assert record.summary["sql"]["rows"]["turn_vectors"] == 1
        assert await turn_rows(core, FORGOTTEN) == 0
        assert await turn_rows(core, KEPT) == 1
        found = await knowledge.search(tenant, SearchRequest(text="blender jar cracked", collection="turns"))
        assert [hit.contact for hit in found.hits] == [KEPT]


async def test_retention_deletes_turn_vectors_older_than_the_tenants_retention(core: CoreSettings) -> None:
    engine = create_engine(core.database_url)
    now = datetime.now(UTC)
    try:
        async with engine.begin() as conn:
            for turn_id, age_days in (("old", 100), ("recent", 10)):
                await conn.execute(
                    TurnVector.__table__.insert().values(
                        tenant="shop",
                        turn_id=turn_id,
                        contact=KEPT,
                        at=now - timedelta(days=age_days),
                        language="en",
                        customer_text="hello",
                        answer_text="hi",
                        model="",
                        vector=b"",
                    )
                )
        deleted = await delete_expired_conversations(engine, lambda _tenant: DataSpec(retention_days=90), now)
        async with engine.connect() as conn:
            left = list(await conn.scalars(select(TurnVector.turn_id)))
    finally:
        await engine.dispose()
    assert deleted.rows["turn_vectors"] == 1
    assert left == ["recent"]
