"""The objects the operator creates for a tenant, built by pure functions (no cluster needed to test them).

A tenant with `spec.scaling.dedicated` gets a conversation Deployment of its own and a KEDA
ScaledObject on the lag of its own JetStream consumer, both owned by the BotTenant so that
deleting the tenant deletes them (Kubernetes' garbage collector follows the owner reference).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from zapflow.operator import crd
from zapflow.platform import catalogue
from zapflow.tenants.model import TenantSpec

TENANT_LABEL = f"{crd.GROUP}/tenant"
CONTAINER_PORT = 8080
# The shared conversation workload's target lag per replica (charts/zapflow/values.yaml, conversation.autoscaling).
LAG_THRESHOLD = 1000
MANAGED_BY = "zapflow-operator"


def conversation_consumer(tenant_name: str) -> catalogue.ConsumerSpec:
    """The durable consumer a tenant's dedicated conversation replicas share: its inbound messages only."""
    inbound = catalogue.every(f"{catalogue.INBOUND_PREFIX}.{tenant_name}")
    return catalogue.shard_consumer(catalogue.CONVERSATION_INBOUND, tenant_name, (inbound,))


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """The reference that makes the BotTenant the controller of a child (deleted with it)."""
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _labels(tenant_name: str, image: str) -> dict[str, str]:
    version = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else "latest"
    return {
        **_selector(tenant_name),
        "app.kubernetes.io/version": version[:63],
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "zapflow",
    }


def _selector(tenant_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "zapflow",
        "app.kubernetes.io/component": "conversation",
        "app.kubernetes.io/instance": f"conversation-{tenant_name}"[:63],
        TENANT_LABEL: tenant_name,
    }


def dedicated_conversation(
    tenant_name: str,
    namespace: str,
    spec: TenantSpec,
    image: str,
    owner: Mapping[str, Any],
    *,
    nats_monitoring_endpoint: str,
    nats_account: str = "$G",
    env: Sequence[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """The Deployment and ScaledObject of a tenant's own conversation workload; none unless the spec asks.

    `env` is the shared conversation container's (store URLs and tokens from the release's Secrets):
    the dedicated replicas run the same service against the same stores. The NATS monitoring endpoint
    (host:port, the headless service) and account are the chart's `nats.monitoringEndpoint` and `keda.account`.
    """
    scaling = spec.scaling
    if not scaling.dedicated:
        return []
    name = f"zapflow-conversation-{tenant_name}"
    consumer = conversation_consumer(tenant_name)
    labels = _labels(tenant_name, image)

    def metadata() -> dict[str, Any]:
        return {
            "name": name,
            "namespace": namespace,
            "labels": dict(labels),
            "ownerReferences": [owner_reference(owner)],
        }

    shard_env = [
        {"name": "ZAPFLOW_CONVERSATION_TENANTS", "value": f'["{tenant_name}"]'},
        {"name": "ZAPFLOW_CONVERSATION_SHARD", "value": tenant_name},
    ]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(),
        "spec": {
            # KEDA owns the replica count; this is the count before its first reading.
            "replicas": scaling.min_replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": _selector(tenant_name)},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "conversation",
                            "image": image,
                            "args": ["conversation", "--port", str(CONTAINER_PORT)],
                            "ports": [{"name": "http", "containerPort": CONTAINER_PORT, "protocol": "TCP"}],
                            "env": [dict(entry) for entry in env] + shard_env,
                            "startupProbe": _probe("/healthz", period=2, failures=30),
                            "livenessProbe": _probe("/healthz", period=10, failures=3),
                            "readinessProbe": _probe("/readyz", period=5, failures=2),
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108 (the pod's own emptyDir)
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }
    scaled_object = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": metadata(),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": scaling.max_replicas,
            "fallback": {"failureThreshold": 3, "replicas": scaling.min_replicas},
            "triggers": [
                {
                    "type": "nats-jetstream",
                    "name": consumer.durable,
                    "metadata": {
                        "natsServerMonitoringEndpoint": nats_monitoring_endpoint,
                        "account": nats_account,
                        "stream": consumer.stream.name,
                        "consumer": consumer.durable,
                        "lagThreshold": str(LAG_THRESHOLD),
                    },
                }
            ],
        },
    }
    return [deployment, scaled_object]


def _probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }
