"""The objects the operator creates for a tenant, built by pure functions (no cluster needed to test them).

A tenant with `spec.scaling.dedicated` gets a conversation Deployment of its own and, when the shared
conversation workload is autoscaled by KEDA, a ScaledObject on the lag of the tenant's own JetStream consumer.
Both are copies of the shared workload's objects (the chart's, read from the API): the same image,
environment, resources, probes and security settings, so a dedicated replica runs exactly what a shared one
runs, told which tenant it serves. Its pods keep the shared pods' labels, so that the conversation Service,
NetworkPolicy and ServiceMonitor cover them, plus `zapflow.io/tenant`, which the shared Deployment's selector
leaves out. Both are owned by the BotTenant: Kubernetes' garbage collector deletes them with it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, cast

import kopf

from zapflow.operator import crd
from zapflow.platform import catalogue
from zapflow.tenants.model import ScalingSpec

TENANT_LABEL = f"{crd.GROUP}/tenant"
MANAGED_BY = "zapflow-operator"
DEDICATED_TENANT_ENV = "ZAPFLOW_CONVERSATION_DEDICATED_TENANT"


def dedicated_name(shared_name: str, tenant_name: str) -> str:
    """The name of a tenant's dedicated Deployment and ScaledObject, beside the shared one's."""
    return f"{shared_name}-{tenant_name}"


def dedicated_conversation(
    tenant_name: str,
    scaling: ScalingSpec,
    owner: Mapping[str, Any],
    shared_deployment: Mapping[str, Any],
    shared_scaled_object: Mapping[str, Any] | None,
) -> list[dict[str, Any]]:
    """The Deployment (and ScaledObject) of a tenant's own conversation workload; none unless the spec asks.

    `shared_deployment` and `shared_scaled_object` are the shared conversation workload's objects as the API
    returns them; without a shared ScaledObject (KEDA off) the Deployment keeps `minReplicas` replicas.
    """
    if not scaling.dedicated:
        return []
    name = dedicated_name(shared_deployment["metadata"]["name"], tenant_name)
    consumer = catalogue.dedicated_conversation_consumer(tenant_name)

    def metadata(shared: Mapping[str, Any]) -> dict[str, Any]:
        labels = dict(shared["metadata"].get("labels") or {})
        return {
            "name": name,
            "namespace": owner["metadata"]["namespace"],
            "labels": labels | {TENANT_LABEL: tenant_name, "app.kubernetes.io/managed-by": MANAGED_BY},
            # The BotTenant as the controller of the child (deleted with it); the object as the API gave it.
            "ownerReferences": [dict(kopf.build_owner_reference(kopf.Body(cast(kopf.RawBody, owner))))],
        }

    shared_spec = shared_deployment["spec"]
    template = copy.deepcopy(shared_spec["template"])
    template["metadata"]["labels"] = dict(template["metadata"].get("labels") or {}) | {TENANT_LABEL: tenant_name}
    for container in template["spec"]["containers"]:
        env = [entry for entry in container.get("env") or [] if entry["name"] != DEDICATED_TENANT_ENV]
        container["env"] = [*env, {"name": DEDICATED_TENANT_ENV, "value": tenant_name}]
    selector = dict(shared_spec["selector"].get("matchLabels") or {}) | {TENANT_LABEL: tenant_name}
    deployment_spec: dict[str, Any] = {
        # KEDA owns the replica count once it runs; this is the count before its first reading.
        "replicas": scaling.min_replicas,
        "selector": {"matchLabels": selector},
        "template": template,
    }
    for kept in ("strategy", "revisionHistoryLimit", "minReadySeconds", "progressDeadlineSeconds"):
        if kept in shared_spec:
            deployment_spec[kept] = copy.deepcopy(shared_spec[kept])
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(shared_deployment),
        "spec": deployment_spec,
    }
    if shared_scaled_object is None:
        return [deployment]
    scaled_spec = copy.deepcopy(shared_scaled_object["spec"])
    scaled_spec["scaleTargetRef"] = {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    scaled_spec["minReplicaCount"] = scaling.min_replicas
    scaled_spec["maxReplicaCount"] = scaling.max_replicas
    if "fallback" in scaled_spec:
        scaled_spec["fallback"]["replicas"] = scaling.min_replicas
    # The shared workload scales on the `conversation` consumer's lag; the tenant's on its own consumer.
    for trigger in scaled_spec["triggers"]:
        if trigger.get("type") == "nats-jetstream":
            trigger["name"] = consumer.durable
            trigger["metadata"] |= {"stream": consumer.stream.name, "consumer": consumer.durable}
    scaled_object = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": metadata(shared_scaled_object),
        "spec": scaled_spec,
    }
    return [deployment, scaled_object]
