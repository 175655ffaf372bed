"""`spec.deletionPolicy: Erase` through kopf and kmock's emulated API, real NATS and Redis, and the real scheduler."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.operator.test_operator_kmock import NAMESPACE, SECRETS, TENANTS, Cluster, secret, secret_refs
from tests.privacy.seed import redis_keys, row_counts, seed_redis, stream_counts
from tests.store.conversations import ALICE, exchange
from tests.support.http import bound_socket, serve
from tests.support.platform import eventually
from tests.support.tenants import tenant_document
from zapflow.operator.handlers import FINALIZER
from zapflow.platform import bus, catalogue
from zapflow.platform.service import create_app
from zapflow.platform.settings import CoreSettings
from zapflow.scheduler.app import SCHEDULER
from zapflow.scheduler.settings import SchedulerSettings
from zapflow.store.engine import create_engine
from zapflow.store.repository import ConversationStore

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def scheduler_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """The scheduler's port, bound and not served yet (connections are refused); the operator is told of it.

    Autouse: set before the `cluster` fixture reads the operator's settings from the environment.
    """
    sock = bound_socket()
    monkeypatch.setenv("ZAPFLOW_OPERATOR_SCHEDULER_URL", f"http://127.0.0.1:{sock.getsockname()[1]}")
    yield sock
    sock.close()


async def test_an_erase_policy_keeps_the_finalizer_until_the_scheduler_has_erased_the_data(
    cluster: Cluster, core: CoreSettings, scheduler_socket: socket.socket, tmp_path: Path
) -> None:
    document = secret_refs(tenant_document(spec={"deletionPolicy": "Erase"}), "creds")
    name = document["metadata"]["name"]
    await cluster.create(SECRETS, secret("creds"))
    await cluster.create(TENANTS, document)
    await cluster.condition(name, "RegistrySynced", "True")
    await bus.ensure_streams(cluster.js, catalogue.ALL_STREAMS)
    engine = create_engine(core.database_url)
    redis = Redis.from_url(core.redis_url, decode_responses=True)
    try:
        await exchange(ConversationStore(engine), "a", 0, tenant=name, contact=ALICE)
        await seed_redis(redis, name)
        await cluster.js.publish(catalogue.inbound_subject(name, ALICE), b"words of a customer")

        async with cluster.api.delete(f"{TENANTS}/{name}") as response:
            assert response.status < 300

        async def reason_given() -> dict[str, Any] | None:
            events = (await cluster.fetch(f"/api/v1/namespaces/{NAMESPACE}/events") or {}).get("items") or []
            return next((e for e in events if "cannot reach the scheduler" in e.get("message", "")), None)

        event = await eventually(reason_given, timeout=20, what="an event saying why the tenant is not erased")
        assert event["reason"] == "ErasureFailed" and f"tenant {name} not erased yet" in event["message"]
        waiting = await cluster.fetch(f"{TENANTS}/{name}")
        assert waiting is not None and FINALIZER in waiting["metadata"]["finalizers"]
        assert await cluster.registry.get(name) is None  # removed before the erasure was asked for
        assert (await row_counts(engine, name))["messages"] == 2

        settings = SchedulerSettings(
            core=core.model_copy(update={"analytics_path": tmp_path / "analytics.duckdb"}), interval_seconds=3600
        )
        async with serve(create_app(SCHEDULER, settings), sock=scheduler_socket):

            async def released() -> bool:
                return await cluster.fetch(f"{TENANTS}/{name}") is None

            await eventually(released, timeout=30, what=f"{name} deleted once its data is erased")

        assert set((await row_counts(engine, name)).values()) == {0}
        assert await redis_keys(redis, name) == []
        assert set((await stream_counts(cluster.js, name)).values()) <= {0, 1}  # the notice to the embedding service
        assert (await stream_counts(cluster.js, name))[catalogue.INBOUND.name] == 0
    finally:
        await redis.aclose()
        await engine.dispose()


async def test_an_erasure_given_up_by_setting_retain_releases_the_finalizer_and_keeps_the_data(
    cluster: Cluster, core: CoreSettings
) -> None:
    document = secret_refs(tenant_document(spec={"deletionPolicy": "Erase"}), "creds")
    name = document["metadata"]["name"]
    await cluster.create(SECRETS, secret("creds"))
    await cluster.create(TENANTS, document)
    await cluster.condition(name, "RegistrySynced", "True")
    engine = create_engine(core.database_url)
    try:
        await exchange(ConversationStore(engine), "a", 0, tenant=name, contact=ALICE)
        async with cluster.api.delete(f"{TENANTS}/{name}") as response:
            assert response.status < 300

        async def refused() -> bool:
            events = (await cluster.fetch(f"/api/v1/namespaces/{NAMESPACE}/events") or {}).get("items") or []
            return any(e.get("reason") == "ErasureFailed" for e in events)

        await eventually(refused, timeout=20, what="an ErasureFailed event")
        retain = {"spec": {"deletionPolicy": "Retain"}}
        headers = {"Content-Type": "application/merge-patch+json"}
        async with cluster.api.patch(f"{TENANTS}/{name}", json=retain, headers=headers) as response:
            assert response.status < 300, await response.text()

        async def released() -> bool:
            return await cluster.fetch(f"{TENANTS}/{name}") is None

        await eventually(released, timeout=20, what=f"{name} deleted without an erasure")
        assert (await row_counts(engine, name))["messages"] == 2
    finally:
        await engine.dispose()
