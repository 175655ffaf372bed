"""Two operator replicas peering through one emulated Kubernetes API: the higher priority acts, the other stands by
and takes over once the first stops."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import kmock
import kopf
import pytest
from nats.js import JetStreamContext

from tests.operator.test_operator_kmock import (
    SECRETS,
    TENANTS,
    VERBS,
    Cluster,
    free_port,
    kube_config,
    secret,
    secret_refs,
)
from tests.support.platform import eventually
from tests.support.tenants import tenant_document
from zapflow.operator.handlers import GROUP, PLURAL, VERSION, run
from zapflow.operator.settings import OperatorSettings
from zapflow.operator.status import Condition
from zapflow.operator.sync import TenantSync
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.model import BotTenant
from zapflow.tenants.registry import TenantRegistry

PEERING = "zapflow"
# Cluster-wide (the chart's `operator.watchNamespaces: ["*"]`): kmock 0.8 cannot parse the GET /api/v1/namespaces
# that kopf sends when it serves a list of namespaces.
PEERINGS = "/apis/kopf.dev/v1/clusterkopfpeerings"
# Which replica a registry write runs in: each replica's tasks inherit the value set when it started.
REPLICA: contextvars.ContextVar[str] = contextvars.ContextVar("replica")


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(replica, tenant) of every registry write either replica attempts, in order."""
    attempted: list[tuple[str, str]] = []
    publish = TenantSync.publish

    async def recorded(self: TenantSync, tenant: BotTenant, force: bool = False) -> Condition:
        attempted.append((REPLICA.get(), tenant.name))
        return await publish(self, tenant, force=force)

    monkeypatch.setattr(TenantSync, "publish", recorded)
    return attempted


@pytest.fixture
async def api(kmock: kmock.KubernetesEmulator) -> kmock.KubernetesEmulator:
    """The emulated API serving BotTenants, Secrets, Events and kopf's cluster-wide peering, with its object."""
    kmock.resources[f"{GROUP}/{VERSION}/{PLURAL}"] = kmock.ResourceInfo(
        kind="BotTenant", singular="bottenant", namespaced=True, subresources={"status"}, verbs=VERBS
    )
    kmock.resources["v1/secrets"] = kmock.ResourceInfo(kind="Secret", singular="secret", namespaced=True, verbs=VERBS)
    kmock.resources["v1/events"] = kmock.ResourceInfo(kind="Event", singular="event", namespaced=True, verbs=VERBS)
    kmock.resources["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", namespaced=False, verbs=VERBS)
    kmock.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock.ResourceInfo(
        kind="CustomResourceDefinition", namespaced=False, verbs=VERBS
    )
    # As the chart's crds/kopf-peerings.yaml defines it: no status subresource.
    kmock.resources["kopf.dev/v1/clusterkopfpeerings"] = kmock.ResourceInfo(
        kind="ClusterKopfPeering", singular="clusterkopfpeering", namespaced=False, verbs=VERBS
    )
    peering = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": PEERING}}
    async with kmock.post(PEERINGS, json=peering) as response:
        assert response.status < 300, await response.text()
    return kmock


@dataclass
class Replica:
    stop: threading.Event
    thread: threading.Thread

    async def stopped(self) -> None:
        """Stop the replica as a rolling update would (kopf leaves the peering on its way out)."""
        self.stop.set()
        await asyncio.to_thread(self.thread.join, 20)
        assert not self.thread.is_alive(), "the replica did not stop"


Start = Callable[[str, int], Awaitable[Replica]]


@pytest.fixture
async def replicas(api: kmock.KubernetesEmulator, core: CoreSettings) -> AsyncIterator[Start]:
    """Start operator replicas, each with a name and a peering priority.

    Each runs in a thread and an event loop of its own, as in a pod of its own: a stopping kopf cancels every
    task its loop started after it did, which would take a replica sharing the loop down with it.
    """
    server = str(api.url).rstrip("/")
    started: list[Replica] = []

    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=server)

    async def start(name: str, priority: int) -> Replica:
        settings = OperatorSettings(
            core=core,
            host="127.0.0.1",
            port=free_port(),
            peering_name=PEERING,
            priority=priority,
            secret_retry_seconds=0.3,
            registry_retry_seconds=0.3,
        )
        stop, ready = threading.Event(), threading.Event()

        async def operate() -> None:
            # kopf's flags in this loop, bridged to the test's thread-safe ones.
            kopf_stop, kopf_ready = asyncio.Event(), asyncio.Event()
            operator = asyncio.create_task(
                run(
                    settings,
                    login=login,
                    stop_flag=kopf_stop,
                    ready_flag=kopf_ready,
                    kube_config=kube_config(server),
                )
            )
            await kopf_ready.wait()
            ready.set()
            await asyncio.to_thread(stop.wait)
            kopf_stop.set()
            await operator

        def in_thread() -> None:
            REPLICA.set(name)  # asyncio.run copies this thread's context into every task of the replica
            asyncio.run(operate())

        replica = Replica(stop, threading.Thread(target=in_thread, name=f"operator-{name}", daemon=True))
        replica.thread.start()
        started.append(replica)
        assert await asyncio.to_thread(ready.wait, 20), f"replica {name} did not start"
        return replica

    yield start
    for replica in started:
        await replica.stopped()


async def peers(api: kmock.KubernetesEmulator, count: int) -> dict[str, Any]:
    """Wait until the peering object lists `count` live replicas; their entries."""

    async def listed() -> dict[str, Any] | None:
        async with api.get(f"{PEERINGS}/{PEERING}") as response:
            found = dict((await response.json()).get("status") or {})
        return found if len(found) == count else None

    return await eventually(listed, timeout=20, what=f"{count} replicas in the peering")


@pytest.mark.timeout(60)
async def test_one_replica_acts_and_the_standby_takes_over_when_it_stops(
    api: kmock.KubernetesEmulator,
    replicas: Start,
    writes: list[tuple[str, str]],
    js: JetStreamContext,
    core: CoreSettings,
    registry: TenantRegistry,
) -> None:
    cluster = Cluster(api, registry, js)
    await cluster.create(SECRETS, secret("creds"))
    first = secret_refs(tenant_document(), "creds")
    second = secret_refs(tenant_document(), "creds")
    first_name, second_name = first["metadata"]["name"], second["metadata"]["name"]
    # The active replica first: the standby's first look at the peering already finds a higher priority,
    # so it never acts (kopf starts a peering replica paused).
    active = await replicas("active", 200)
    await peers(api, 1)
    await replicas("standby", 100)
    assert sorted(peer["priority"] for peer in (await peers(api, 2)).values()) == [100, 200]

    await cluster.create(TENANTS, first)
    await cluster.condition(first_name, "Ready", "True")

    assert writes == [("active", first_name)], "the standby stays paused while the active replica runs"
    kv = await js.key_value(core.tenant_bucket)
    assert len(await kv.history(first_name)) == 1

    await active.stopped()
    await peers(api, 1)  # the active replica left the peering on its way out
    await cluster.create(TENANTS, second)
    await cluster.condition(second_name, "Ready", "True")

    assert ("standby", second_name) in writes
    assert ("active", second_name) not in writes
    assert await registry.get(second_name) is not None

    # The standby resumes the first tenant too, and leaves its entry alone: it holds the same document.
    async def first_resumed() -> bool:
        return ("standby", first_name) in writes

    await eventually(first_resumed, what="the standby resuming the first tenant")
    assert len(await kv.history(first_name)) == 1
