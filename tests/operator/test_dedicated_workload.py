"""A BotTenant that asks for a conversation workload of its own gets one, through kopf, kmock's emulated API and a
real nats-server: its consumer first, then a Deployment and ScaledObject copied from the shared workload's,
owned by the tenant; asking no more removes them, and so does deleting the tenant."""

from __future__ import annotations

from typing import Any

import pytest
from nats.js import api
from nats.js.errors import NotFoundError

from tests.operator.test_children import shared_objects
from tests.operator.test_operator_kmock import NAMESPACE, SECRETS, TENANTS, Cluster, secret, secret_refs
from tests.support.platform import eventually
from tests.support.tenants import tenant_document
from zapflow.operator.children import DEDICATED_TENANT_ENV
from zapflow.operator.settings import OperatorSettings
from zapflow.platform import bus, catalogue

# The shared workload the operator copies (OperatorSettings.conversation_workload's default).
SHARED = OperatorSettings.model_fields["conversation_workload"].default
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
SCALED_OBJECTS = f"/apis/keda.sh/v1alpha1/namespaces/{NAMESPACE}/scaledobjects"

pytestmark = pytest.mark.timeout(120)


async def install_shared_workload(cluster: Cluster) -> None:
    """The chart's shared conversation Deployment and ScaledObject, as a release would have them."""
    for path, item in zip((DEPLOYMENTS, SCALED_OBJECTS), shared_objects(), strict=True):
        assert item is not None
        item["metadata"] = {"name": SHARED, "namespace": NAMESPACE, "labels": item["metadata"]["labels"]}
        await cluster.create(path, item)


async def dedicated_tenant(cluster: Cluster, **scaling: Any) -> tuple[str, dict[str, Any]]:
    await bus.ensure_streams(cluster.js, [catalogue.INBOUND])
    await cluster.create(SECRETS, secret("creds"))
    document = secret_refs(tenant_document(), "creds")
    document["spec"]["scaling"] = {"dedicated": True, **scaling}
    await cluster.create(TENANTS, document)
    return document["metadata"]["name"], document


async def available(cluster: Cluster, name: str) -> dict[str, Any]:
    """Wait for the tenant's own Deployment, then report a replica available, as its ReplicaSet would."""

    async def created() -> dict[str, Any] | None:
        return await cluster.fetch(f"{DEPLOYMENTS}/{SHARED}-{name}")

    await eventually(created, timeout=20, what=f"the Deployment of {name}")
    patch = {"status": {"replicas": 1, "availableReplicas": 1, "readyReplicas": 1}}
    async with cluster.api.patch(f"{DEPLOYMENTS}/{SHARED}-{name}", json=patch) as response:
        assert response.status < 300, await response.text()
    return await cluster.condition(name, "WorkloadSynced", "True")


async def test_a_dedicated_tenant_gets_its_consumer_and_a_copy_of_the_shared_workload(cluster: Cluster) -> None:
    await install_shared_workload(cluster)
    name, _ = await dedicated_tenant(cluster, minReplicas=2, maxReplicas=5)

    # Until its own Deployment has a replica, the registry keeps the tenant on the shared replicas.
    starting = await cluster.condition(name, "WorkloadSynced", "False")
    assert starting["reason"] == "WorkloadStarting"
    assert (await cluster.condition(name, "Ready", "False"))["reason"] == "WorkloadStarting"
    entry = await cluster.registry.get(name)
    assert entry is not None and not entry.spec.scaling.dedicated

    workload = await available(cluster, name)
    await cluster.condition(name, "Ready", "True")

    assert workload["reason"] == "Dedicated"
    assert "2 to 5 replicas" in workload["message"]
    tenant = await cluster.fetch(f"{TENANTS}/{name}")
    deployment = await cluster.fetch(f"{DEPLOYMENTS}/{SHARED}-{name}")
    scaled = await cluster.fetch(f"{SCALED_OBJECTS}/{SHARED}-{name}")
    assert tenant is not None and deployment is not None and scaled is not None
    for child in (deployment, scaled):
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"]) == ("BotTenant", tenant["metadata"]["uid"])
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": DEDICATED_TENANT_ENV, "value": name} in container["env"]
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (2, 5)
    consumer = catalogue.dedicated_conversation_consumer(name)
    assert scaled["spec"]["triggers"][0]["metadata"]["consumer"] == consumer.durable
    # The consumer exists before the registry sends the tenant's turns to its own replicas, from then on.
    info = await cluster.js.consumer_info(consumer.stream.name, consumer.durable)
    assert info.config.deliver_policy == api.DeliverPolicy.NEW
    entry = await cluster.registry.get(name)
    assert entry is not None and entry.spec.scaling.dedicated


async def test_a_tenant_that_no_longer_asks_loses_its_workload_and_consumer(cluster: Cluster) -> None:
    await install_shared_workload(cluster)
    name, _ = await dedicated_tenant(cluster)
    await available(cluster, name)
    consumer = catalogue.dedicated_conversation_consumer(name)

    patch = {"metadata": {"generation": 2}, "spec": {"scaling": {"dedicated": False}}}
    async with cluster.api.patch(f"{TENANTS}/{name}", json=patch) as response:
        assert response.status < 300, await response.text()

    async def shared_again() -> dict[str, Any] | None:
        found = await cluster.condition(name, "WorkloadSynced", "True")
        return found if found["reason"] == "Shared" else None

    await eventually(shared_again, timeout=20, what=f"{name} back on the shared workload")
    assert await cluster.fetch(f"{DEPLOYMENTS}/{SHARED}-{name}") is None
    assert await cluster.fetch(f"{SCALED_OBJECTS}/{SHARED}-{name}") is None
    with pytest.raises(NotFoundError):
        await cluster.js.consumer_info(consumer.stream.name, consumer.durable)
    entry = await cluster.registry.get(name)
    assert entry is not None and not entry.spec.scaling.dedicated


async def test_without_the_shared_workload_the_condition_says_what_is_missing(cluster: Cluster) -> None:
    name, _ = await dedicated_tenant(cluster)

    missing = await cluster.condition(name, "WorkloadSynced", "False")

    assert missing["reason"] == "SharedWorkloadMissing"
    assert f"no Deployment {NAMESPACE}/{SHARED} to copy" in missing["message"]
    ready = await cluster.condition(name, "Ready", "False")
    assert ready["reason"] == "SharedWorkloadMissing"


async def test_deleting_a_dedicated_tenant_deletes_its_consumer(cluster: Cluster) -> None:
    await install_shared_workload(cluster)
    name, _ = await dedicated_tenant(cluster)
    await available(cluster, name)
    consumer = catalogue.dedicated_conversation_consumer(name)

    async with cluster.api.delete(f"{TENANTS}/{name}") as response:
        assert response.status < 300

    async def consumer_gone() -> bool:
        try:
            await cluster.js.consumer_info(consumer.stream.name, consumer.durable)
        except NotFoundError:
            return True
        return False

    await eventually(consumer_gone, timeout=20, what=f"the consumer {consumer.durable} deleted")


async def test_a_dedicated_workload_without_replicas_hands_the_tenant_back_to_the_shared_ones(
    cluster: Cluster,
) -> None:
    await install_shared_workload(cluster)
    name, _ = await dedicated_tenant(cluster)
    await available(cluster, name)

    patch = {"status": {"availableReplicas": 0, "readyReplicas": 0}}
    async with cluster.api.patch(f"{DEPLOYMENTS}/{SHARED}-{name}", json=patch) as response:
        assert response.status < 300, await response.text()

    # The resync timer sees it: the condition says so, and the registry sends the turns to the shared replicas.
    starting = await cluster.condition(name, "WorkloadSynced", "False")
    assert starting["reason"] == "WorkloadStarting"

    async def shared() -> bool:
        entry = await cluster.registry.get(name)
        return entry is not None and not entry.spec.scaling.dedicated

    await eventually(shared, timeout=20, what=f"the registry entry of {name} back on the shared replicas")
