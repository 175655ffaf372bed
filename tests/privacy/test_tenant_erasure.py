"""Erasing a whole tenant from every store, on PostgreSQL and SQLite, with real NATS and Redis; the admin API
and the CLI on SQLite."""

from __future__ import annotations

import asyncio
from fnmatch import fnmatchcase
from pathlib import Path
from typing import cast

import httpx
import pytest
import yaml
from nats.js import JetStreamContext
from redis.asyncio import Redis
from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.privacy.seed import (
    NAMED_LIKE_A_KIND,
    due_members,
    redis_keys,
    row_counts,
    seed_knowledge,
    seed_redis,
    seed_sql,
    seed_streams,
    stream_counts,
)
from tests.store.conversations import ALICE, exchange
from tests.store.events import at
from tests.support.cli import cli_environment, declare_streams, run_zapflow
from tests.support.http import serve
from tests.support.knowledge import replica
from tests.support.platform import eventually
from tests.support.servers import ManagedServer
from tests.support.tenants import make_tenant, tenant_document
from zapflow.analytics.archive import Archiver
from zapflow.analytics.warehouse import CAMPAIGN_TABLES, TABLES, open_warehouse
from zapflow.platform import bus, catalogue
from zapflow.platform.keys import (
    SCHEDULER_LEADER,
    ContactKeys,
    due_member,
    rollup_bucket_key,
    spans_tenants,
    tenant_keys_pattern,
)
from zapflow.platform.service import create_app
from zapflow.platform.settings import CoreSettings
from zapflow.privacy.erasure import Eraser, ErasureError, list_erasures
from zapflow.scheduler.app import SCHEDULER
from zapflow.scheduler.settings import SchedulerSettings
from zapflow.store.engine import create_engine
from zapflow.store.lifecycle import TENANT_TABLES, close_idle_conversations
from zapflow.store.models import Base, Erasure
from zapflow.store.repository import ConversationStore
from zapflow.tenants.model import DataSpec
from zapflow.tenants.registry import TenantRegistry

pytestmark = pytest.mark.timeout(300)

ERASED = "acme"
KEPT = "globex"
ADMIN = {"Authorization": "Bearer changethis"}
NOBODY = "5511900000009"


def figures(warehouse: Path, tenant: str) -> dict[str, int]:
    """The tenant's rows in each table of the analytics file."""
    with open_warehouse(warehouse, read_only=True) as analytics:
        return {
            table: int(
                analytics.execute(f"SELECT count(*) FROM {table} WHERE tenant = ?", [tenant]).fetchone()[0]  # type: ignore[index]  # noqa: S608
            )
            for table in (*TABLES, *CAMPAIGN_TABLES)
        }


async def close_and_archive(engine: AsyncEngine, warehouse: Path) -> int:
    """Close the conversations idle an hour after T0 and archive them; how many."""
    await close_idle_conversations(engine, lambda _: DataSpec(), at(3600))
    return await Archiver(engine, warehouse, "secret").archive_closed(now=at(3600))


def test_a_tenant_erasure_reaches_every_table_with_a_tenant_column_before_those_it_points_at() -> None:
    with_tenant = {table.name for table in Base.metadata.sorted_tables if "tenant" in table.c}
    erased = [cast(Table, model.__table__) for model in TENANT_TABLES]
    assert with_tenant - {table.name for table in erased} == {Erasure.__tablename__}
    for position, table in enumerate(erased):
        pointed_at = {key.column.table.name for key in table.foreign_keys}
        assert not pointed_at & {earlier.name for earlier in erased[:position]}, table.name


def test_a_tenant_named_like_the_schedulers_keys_does_not_take_them() -> None:
    pattern = tenant_keys_pattern("scheduler")
    shared = [SCHEDULER_LEADER, rollup_bucket_key(42)]
    assert all(fnmatchcase(key, pattern) for key in shared)  # what SCAN would find
    assert all(spans_tenants(key) for key in shared)
    assert not spans_tenants(ContactKeys("scheduler", ALICE).conversation)  # the tenant's own


async def test_erasing_a_tenant_empties_every_store_and_leaves_the_other_tenant_whole(
    engine: AsyncEngine,
    database_url: str,
    nats: ManagedServer,
    redis: ManagedServer,
    js: JetStreamContext,
    registry: TenantRegistry,
    tmp_path: Path,
) -> None:
    core = CoreSettings(nats_url=nats.url, redis_url=f"{redis.url}/0", database_url=database_url, log_json=True)
    await bus.ensure_streams(js, catalogue.ALL_STREAMS)
    client = Redis.from_url(core.redis_url, decode_responses=True)
    warehouse = tmp_path / "analytics.duckdb"
    eraser = Eraser(engine, client, js, warehouse, "secret", registry=registry)
    try:
        async with replica(core, backend="none") as knowledge:
            for tenant in (ERASED, KEPT):
                await seed_sql(engine, client, tenant)
                await seed_knowledge(knowledge, engine, tenant)
                await seed_redis(client, tenant)
                await seed_streams(js, tenant)
            assert await close_and_archive(engine, warehouse) == 2
            await client.set(SCHEDULER_LEADER, "a scheduler replica")
            contact_erasure = await eraser.erase(ERASED, NOBODY, "cli")
            rows_before = await row_counts(engine, ERASED)
            kept_before = (
                await row_counts(engine, KEPT),
                await redis_keys(client, KEPT),
                await stream_counts(js, KEPT),
                figures(warehouse, KEPT),
            )
            assert all(rows_before.values()) and all(kept_before[0].values())  # a row of each in every table
            assert figures(warehouse, ERASED)["sessions"] == 1

            record = await eraser.erase_tenant(ERASED, "cli")

            assert record.scope == "tenant"
            assert record.summary["sql"]["rows"] == rows_before
            assert await row_counts(engine, ERASED) == dict.fromkeys(rows_before, 0)
            assert await redis_keys(client, ERASED) == []
            assert await due_members(client) == [due_member(KEPT, ALICE)]
            assert await client.get(SCHEDULER_LEADER) == "a scheduler replica"
            left = await stream_counts(js, ERASED)
            # All but the notice that tells the embedding replicas (it names the tenant, nothing else).
            assert left.pop(catalogue.KNOWLEDGE.name) == 1 and set(left.values()) == {0}
            assert set(figures(warehouse, ERASED).values()) == {0}
            assert record.summary["analytics"]["sessions"] == 1

            async def forgotten() -> bool:
                index = knowledge.index_of(ERASED)
                return not len(index.knowledge) and not len(index.turns)

            await eventually(forgotten, what="the replica's index of the erased tenant emptied")
            assert len(knowledge.index_of(KEPT).knowledge) and len(knowledge.index_of(KEPT).turns)
            assert kept_before == (
                await row_counts(engine, KEPT),
                await redis_keys(client, KEPT),
                await stream_counts(js, KEPT),
                figures(warehouse, KEPT),
            )
            recorded = {erasure.id: erasure.scope for erasure in await list_erasures(engine, ERASED, 10)}
            assert recorded == {record.id: "tenant", contact_erasure.id: "contact"}

            again = await eraser.erase_tenant(ERASED, "cli")
            assert again.summary["sql"]["rows"] == dict.fromkeys(rows_before, 0)
            assert again.summary["redis"]["keys"] == 0
            # A tenant named after an event kind takes none of the others' events or dead letters.
            await eraser.erase_tenant(NAMED_LIKE_A_KIND, "cli")
            assert await stream_counts(js, KEPT) == kept_before[2]
    finally:
        await client.aclose()


async def test_the_admin_api_erases_a_deleted_tenant_and_finishes_an_erasure_stopped_halfway(
    core: CoreSettings, js: JetStreamContext, registry: TenantRegistry, tmp_path: Path
) -> None:
    tenant = make_tenant()
    name = tenant.name
    warehouse = tmp_path / "analytics.duckdb"
    engine = create_engine(core.database_url)
    client = Redis.from_url(core.redis_url, decode_responses=True)
    try:
        await bus.ensure_streams(js, catalogue.ALL_STREAMS)
        await exchange(ConversationStore(engine), "a", 0, tenant=name, contact=ALICE)
        assert await close_and_archive(engine, warehouse) == 1
        await seed_redis(client, name)
        await js.publish(catalogue.inbound_subject(name, ALICE), b"words of a customer")
        with pytest.raises(ErasureError, match="no tenant registry"):  # an eraser that cannot check refuses
            await Eraser(engine, client, js, warehouse, "secret").erase_tenant(name, "cli")
        await registry.put(tenant)
        # The analytics file is unusable until the test puts it back: the erasure stops at that store.
        aside = warehouse.rename(tmp_path / "aside.duckdb")
        warehouse.write_bytes(b"not a DuckDB file")
        settings = SchedulerSettings(core=core.model_copy(update={"analytics_path": warehouse}), interval_seconds=3600)
        erase = {"tenant": name, "confirm": name}
        async with serve(create_app(SCHEDULER, settings)) as url, httpx.AsyncClient(base_url=url, timeout=60) as api:
            registered = await api.post("/admin/v1/erasures/tenants", json=erase, headers=ADMIN)
            assert registered.status_code == 409
            assert f"delete it first: zapflow tenant delete {name}" in registered.json()["detail"]
            assert await registry.delete(name)
            typo = await api.post("/admin/v1/erasures/tenants", json={**erase, "confirm": f"{name}x"}, headers=ADMIN)
            assert typo.status_code == 422 and "confirm must repeat the tenant's name" in typo.text
            assert (await api.post("/admin/v1/erasures/tenants", json=erase)).status_code == 401

            stopped = await api.post("/admin/v1/erasures/tenants", json=erase, headers=ADMIN)

            assert stopped.status_code == 503
            detail = stopped.json()["detail"]
            assert detail.startswith("erasure incomplete: the analytics file: ")
            assert "already erased from Redis, JetStream, the database; erase again to finish" in detail
            assert (await row_counts(engine, name))["messages"] == 0
            assert await list_erasures(engine, name, 10) == []

            warehouse.unlink()
            aside.rename(warehouse)
            finished = await api.post("/admin/v1/erasures/tenants", json=erase, headers=ADMIN)

            assert finished.status_code == 201, finished.text
            assert finished.json()["scope"] == "tenant"
            assert finished.json()["summary"]["analytics"]["sessions"] == 1
            listed = await api.get("/admin/v1/erasures", params={"tenant": name}, headers=ADMIN)
            assert [(entry["id"], entry["scope"]) for entry in listed.json()] == [(finished.json()["id"], "tenant")]
        assert set(figures(warehouse, name).values()) == {0}
    finally:
        await client.aclose()
        await engine.dispose()


def test_the_cli_erases_a_tenant_only_once_it_is_deleted_and_only_with_yes(core: CoreSettings, tmp_path: Path) -> None:
    document = tenant_document()
    name = document["metadata"]["name"]
    (tmp_path / "tenant.yaml").write_text(yaml.safe_dump(document))
    env = cli_environment(
        ZAPFLOW_NATS_URL=core.nats_url,
        ZAPFLOW_REDIS_URL=core.redis_url,
        ZAPFLOW_DATABASE_URL=core.database_url,
        ZAPFLOW_ANALYTICS_PATH=str(tmp_path / "analytics.duckdb"),
    )
    asyncio.run(declare_streams(core.nats_url))  # as the services do: an erasure refuses a NATS without them
    assert run_zapflow(env, "tenant", "apply", "-f", str(tmp_path / "tenant.yaml")).returncode == 0

    unconfirmed = run_zapflow(env, "tenant", "erase", name)
    assert unconfirmed.returncode == 1
    assert "cannot be undone: run it again with --yes" in unconfirmed.stderr
    registered = run_zapflow(env, "tenant", "erase", name, "--yes")
    assert registered.returncode == 1
    assert f"delete it first: zapflow tenant delete {name}" in registered.stderr
    bad = run_zapflow(env, "tenant", "erase", "Not_A_Tenant", "--yes")
    assert bad.returncode == 1 and "not a tenant name" in bad.stderr
    for refused in (unconfirmed, registered, bad):
        assert "Traceback" not in refused.stderr

    assert run_zapflow(env, "tenant", "delete", name).returncode == 0
    erased = run_zapflow(env, "tenant", "erase", name, "--yes")

    assert erased.returncode == 0, erased.stderr
    assert f"tenant {name} erased (erasure " in erased.stdout

    async def recorded() -> list[tuple[str, str, str]]:
        engine = create_engine(core.database_url)
        try:
            async with engine.connect() as conn:
                query = select(Erasure.tenant, Erasure.scope, Erasure.requested_by)
                return [(row.tenant, row.scope, row.requested_by) for row in await conn.execute(query)]
        finally:
            await engine.dispose()

    assert asyncio.run(recorded()) == [(name, "tenant", "cli")]
