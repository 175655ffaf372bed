"""kopf running the operator against kmock's emulated Kubernetes API (a real HTTP server) and a real nats-server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import kmock
import kopf
import pytest
from lightkube import KubeConfig
from lightkube.config import models as kube_models
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client.parser import text_string_to_metric_families

from tests.support.http import bound_socket
from tests.support.platform import eventually
from tests.support.tenants import tenant_document
from zapflow.operator.handlers import FINALIZER, GROUP, PLURAL, VERSION, run
from zapflow.operator.settings import OperatorSettings
from zapflow.platform import bus
from zapflow.platform.catalogue import TIMER_STREAM, timer_subject
from zapflow.platform.settings import CoreSettings
from zapflow.scheduler.timers import schedule_timer
from zapflow.tenants.registry import TenantRegistry

NAMESPACE = "shop"
TENANTS = f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}"
SECRETS = f"/api/v1/namespaces/{NAMESPACE}/secrets"
VERBS = {"list", "watch", "get", "create", "patch", "update", "delete"}


@dataclass
class Cluster:
    api: kmock.KubernetesEmulator
    registry: TenantRegistry
    js: JetStreamContext
    # The operator's /healthz, /readyz and /metrics.
    operations_url: str = ""

    async def create(self, path: str, document: dict[str, Any]) -> None:
        # What the API server would add, and the emulator does not: kopf's patches test resourceVersion.
        document["metadata"] |= {"uid": str(uuid.uuid4()), "resourceVersion": "1", "generation": 1}
        async with self.api.post(path, json=document) as response:
            assert response.status < 300, await response.text()

    async def fetch(self, path: str) -> dict[str, Any] | None:
        async with self.api.get(path) as response:
            if response.status == 404:
                return None
            assert response.status == 200, await response.text()
            found: dict[str, Any] = await response.json()
            return found

    async def condition(self, name: str, kind: str, status: str) -> dict[str, Any]:
        """Wait until the tenant's condition `kind` has `status`; the condition."""

        async def probe() -> dict[str, Any] | None:
            tenant = await self.fetch(f"{TENANTS}/{name}") or {}
            conditions = (tenant.get("status") or {}).get("conditions") or []
            return next((c for c in conditions if c["type"] == kind and c["status"] == status), None)

        return await eventually(probe, timeout=20, what=f"{kind}={status} on {name}")


def secret_refs(document: dict[str, Any], secret: str) -> dict[str, Any]:
    """The tenant document with its WhatsApp credentials in a Kubernetes Secret."""
    whatsapp = document["spec"]["whatsapp"]
    for field, key in (("appSecret", "app-secret"), ("accessToken", "access-token"), ("verifyToken", "verify-token")):
        whatsapp[field] = {"secretKeyRef": {"name": secret, "key": key}}
    document["metadata"]["namespace"] = NAMESPACE
    return document


def secret(name: str) -> dict[str, Any]:
    data = {key: base64.b64encode(b"s3cret").decode() for key in ("app-secret", "access-token", "verify-token")}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NAMESPACE}, "data": data}


def kube_config(server: str) -> KubeConfig:
    """lightkube's configuration for the emulated API (no credentials: it takes any request)."""
    return KubeConfig.from_one(cluster=kube_models.Cluster(server=server), user=kube_models.User())


def free_port() -> int:
    # kopf's liveness endpoint takes a URL, where port 0 reads as the scheme's default.
    with bound_socket() as sock:
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def cluster(
    kmock: kmock.KubernetesEmulator, core: CoreSettings, js: JetStreamContext, registry: TenantRegistry
) -> AsyncIterator[Cluster]:
    """The emulated API with the resources the operator uses, and the operator running against it."""
    kmock.resources[f"{GROUP}/{VERSION}/{PLURAL}"] = kmock.ResourceInfo(
        kind="BotTenant", singular="bottenant", namespaced=True, subresources={"status"}, verbs=VERBS
    )
    kmock.resources["v1/secrets"] = kmock.ResourceInfo(kind="Secret", singular="secret", namespaced=True, verbs=VERBS)
    kmock.resources["v1/events"] = kmock.ResourceInfo(kind="Event", singular="event", namespaced=True, verbs=VERBS)
    # A dedicated conversation workload: the operator copies the shared one's objects.
    kmock.resources["apps/v1/deployments"] = kmock.ResourceInfo(
        kind="Deployment", singular="deployment", namespaced=True, verbs=VERBS
    )
    kmock.resources["keda.sh/v1alpha1/scaledobjects"] = kmock.ResourceInfo(
        kind="ScaledObject", singular="scaledobject", namespaced=True, verbs=VERBS
    )
    # kopf starts its watchers once it has seen these two served (it watches them for new namespaces and CRDs).
    kmock.resources["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", namespaced=False, verbs=VERBS)
    kmock.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock.ResourceInfo(
        kind="CustomResourceDefinition", namespaced=False, verbs=VERBS
    )
    await bus.ensure_streams(js, [TIMER_STREAM])
    settings = OperatorSettings(
        core=core,
        host="127.0.0.1",
        port=free_port(),
        standalone=True,
        secret_retry_seconds=0.3,
        registry_retry_seconds=0.3,
        secret_propagation_seconds=0,
        resync_seconds=0.5,
    )
    server = str(kmock.url).rstrip("/")

    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=server)

    stop, ready = asyncio.Event(), asyncio.Event()
    kube = kube_config(server)
    operator = asyncio.create_task(run(settings, login=login, stop_flag=stop, ready_flag=ready, kube_config=kube))
    await asyncio.wait_for(ready.wait(), timeout=20)
    yield Cluster(kmock, registry, js, f"http://{settings.host}:{settings.port}")
    stop.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(operator, timeout=20)


async def test_a_created_tenant_is_written_to_the_registry_and_ready(cluster: Cluster) -> None:
    document = secret_refs(tenant_document(), "creds")
    name = document["metadata"]["name"]
    await cluster.create(SECRETS, secret("creds"))
    await cluster.create(TENANTS, document)

    ready = await cluster.condition(name, "Ready", "True")

    assert ready["reason"] == "Synced"
    stored = await cluster.registry.get(name)
    assert stored is not None
    assert stored.spec.whatsapp.app_secret.secret_key_ref is not None  # a reference, never the value
    assert (stored.metadata.model_extra or {})["namespace"] == NAMESPACE
    tenant = await cluster.fetch(f"{TENANTS}/{name}")
    assert tenant is not None
    assert FINALIZER in tenant["metadata"]["finalizers"]


async def test_a_bad_spec_gets_a_condition_naming_the_field_and_nothing_is_written(cluster: Cluster) -> None:
    document = secret_refs(tenant_document(), "creds")
    document["spec"]["whatsapp"]["phoneNumberId"] = "not-a-number"
    name = document["metadata"]["name"]
    await cluster.create(TENANTS, document)

    ready = await cluster.condition(name, "Ready", "False")

    assert ready["reason"] == "InvalidSpec"
    assert "spec.whatsapp.phoneNumberId" in ready["message"]
    assert await cluster.registry.get(name) is None


async def test_a_missing_secret_is_reported_then_resolved_once_it_exists(cluster: Cluster) -> None:
    document = secret_refs(tenant_document(), "late-creds")
    name = document["metadata"]["name"]
    await cluster.create(TENANTS, document)

    missing = await cluster.condition(name, "SecretsResolved", "False")
    assert missing["reason"] == "SecretMissing"
    assert f"Secret {NAMESPACE}/late-creds does not exist" in missing["message"]
    assert "spec.whatsapp.appSecret" in missing["message"]
    assert await cluster.registry.get(name) is None

    await cluster.create(SECRETS, secret("late-creds"))

    await cluster.condition(name, "SecretsResolved", "True")
    await cluster.condition(name, "Ready", "True")
    assert await cluster.registry.get(name) is not None


async def test_deleting_a_tenant_removes_its_entry_and_timers_and_releases_the_finalizer(cluster: Cluster) -> None:
    document = secret_refs(tenant_document(), "creds")
    name = document["metadata"]["name"]
    await cluster.create(SECRETS, secret("creds"))
    await cluster.create(TENANTS, document)
    await cluster.condition(name, "Ready", "True")
    nudge = timer_subject("reengage", name, "5511999990000")
    await schedule_timer(cluster.js, "reengage", name, "5511999990000", datetime.now(UTC) + timedelta(days=1))

    async with cluster.api.delete(f"{TENANTS}/{name}") as response:
        assert response.status < 300

    async def gone() -> bool:
        return await cluster.fetch(f"{TENANTS}/{name}") is None

    await eventually(gone, timeout=20, what=f"{name} deleted once its finalizer is released")
    assert await cluster.registry.get(name) is None
    with pytest.raises(NotFoundError):
        await cluster.js.get_last_msg(TIMER_STREAM.name, nudge)


async def test_a_registry_entry_removed_by_hand_is_restored(cluster: Cluster) -> None:
    document = secret_refs(tenant_document(), "creds")
    name = document["metadata"]["name"]
    await cluster.create(SECRETS, secret("creds"))
    await cluster.create(TENANTS, document)
    await cluster.condition(name, "Ready", "True")

    assert await cluster.registry.delete(name)

    await eventually(lambda: cluster.registry.get(name), timeout=20, what=f"{name} restored in the registry")

    async def drift_event() -> dict[str, Any] | None:
        events = (await cluster.fetch(f"/api/v1/namespaces/{NAMESPACE}/events") or {}).get("items") or []
        return next((e for e in events if e.get("reason") == "RegistryDrift"), None)

    event = await eventually(drift_event, timeout=20, what="a RegistryDrift event")
    assert event["message"] == "the registry entry was removed; rewritten from the resource"


async def test_the_operator_reports_each_tenants_readiness_in_its_metrics(cluster: Cluster) -> None:
    ready_tenant = secret_refs(tenant_document(), "creds")
    waiting_tenant = secret_refs(tenant_document(), "never-created")
    await cluster.create(SECRETS, secret("creds"))
    for document in (ready_tenant, waiting_tenant):
        await cluster.create(TENANTS, document)
    await cluster.condition(ready_tenant["metadata"]["name"], "Ready", "True")
    await cluster.condition(waiting_tenant["metadata"]["name"], "Ready", "False")

    async with httpx.AsyncClient(base_url=cluster.operations_url, timeout=10) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        exposition = (await client.get("/metrics")).text

    families = {family.name: family for family in text_string_to_metric_families(exposition)}
    readiness = {s.labels["tenant"]: s.value for s in families["zapflow_operator_tenant_ready"].samples}
    assert readiness[ready_tenant["metadata"]["name"]] == 1
    assert readiness[waiting_tenant["metadata"]["name"]] == 0
    syncs = {
        s.labels["reason"]: s.value for s in families["zapflow_operator_syncs"].samples if s.name.endswith("_total")
    }
    assert syncs["Synced"] >= 1 and syncs["SecretMissing"] >= 1
