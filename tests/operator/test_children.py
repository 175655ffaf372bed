"""The dedicated conversation workload the operator builds for a tenant: valid objects, owned by the tenant."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from kubernetes_validate.utils import latest_version

from zapflow.operator import children, crd
from zapflow.platform import catalogue
from zapflow.tenants.model import BotTenant

IMAGE = "registry.example/zapflow:1.4.0"
ENDPOINT = "nats-headless.nats.svc.cluster.local:8222"
SHARED_ENV = [{"name": "ZAPFLOW_NATS_URL", "valueFrom": {"secretKeyRef": {"name": "zf-zapflow", "key": "nats-url"}}}]


def tenant(name: str = "acme", **scaling: Any) -> tuple[BotTenant, dict[str, Any]]:
    """A BotTenant and the object the API server would hand the operator (with its uid)."""
    secret = {"secretKeyRef": {"name": f"{name}-whatsapp", "key": "token"}}
    document = {
        "apiVersion": f"{crd.GROUP}/{crd.VERSION}",
        "kind": crd.KIND,
        "metadata": {"name": name, "namespace": "tenants", "uid": "0b7c1a52-6f1e-4f63-9d0c-3c1f0c0ffee0"},
        "spec": {
            "whatsapp": {"phoneNumberId": "123", "appSecret": secret, "accessToken": secret, "verifyToken": secret},
            "scaling": scaling,
        },
    }
    return BotTenant.model_validate(document), document


def build(name: str = "acme", **scaling: Any) -> list[dict[str, Any]]:
    model, body = tenant(name, **scaling)
    return children.dedicated_conversation(
        model.name, "tenants", model.spec, IMAGE, body, nats_monitoring_endpoint=ENDPOINT, env=SHARED_ENV
    )


def test_a_tenant_without_a_dedicated_workload_gets_none() -> None:
    assert build() == []
    assert build(dedicated=False, maxReplicas=8) == []


@pytest.mark.parametrize("version", ["1.27.0", latest_version()])
def test_the_dedicated_workload_is_valid_for_kubernetes_and_keda(version: str) -> None:
    deployment, scaled = build(dedicated=True, minReplicas=2, maxReplicas=6)
    kubernetes_validate.validate(json.loads(json.dumps(deployment)), version, strict=True)
    ScaledObject.model_validate(scaled, extra="forbid")
    assert (deployment["kind"], scaled["kind"]) == ("Deployment", "ScaledObject")


def test_the_tenant_owns_both_objects() -> None:
    _, body = tenant()
    for item in build(dedicated=True):
        (reference,) = item["metadata"]["ownerReferences"]
        assert reference == {
            "apiVersion": "zapflow.io/v1alpha1",
            "kind": "BotTenant",
            "name": "acme",
            "uid": body["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert item["metadata"]["namespace"] == "tenants"
        assert item["metadata"]["labels"]["zapflow.io/tenant"] == "acme"
        assert item["metadata"]["labels"]["app.kubernetes.io/part-of"] == "zapflow"


def test_keda_scales_the_deployment_on_the_tenants_own_consumer_within_its_bounds() -> None:
    deployment, scaled = build(dedicated=True, minReplicas=2, maxReplicas=6)
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 6)
    (trigger,) = spec["triggers"]
    consumer = children.conversation_consumer("acme")
    assert trigger["type"] == "nats-jetstream"
    assert trigger["metadata"]["stream"] == catalogue.CONVERSATION_INBOUND.stream.name
    assert trigger["metadata"]["consumer"] == consumer.durable == "conversation-acme"
    assert trigger["metadata"]["natsServerMonitoringEndpoint"] == ENDPOINT
    assert all(isinstance(value, str) for value in trigger["metadata"].values()), "KEDA metadata values are strings"
    # The consumer sees this tenant's messages and no other's.
    assert consumer.filter_subjects == (catalogue.every(f"{catalogue.INBOUND_PREFIX}.acme"),)
    assert consumer.filter_subjects != children.conversation_consumer("acme-2").filter_subjects


def test_the_pods_run_the_conversation_service_for_this_tenant_locked_down() -> None:
    deployment, _ = build(dedicated=True)
    template = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    pod = template["spec"]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert container["args"] == ["conversation", "--port", "8080"]
    env = {entry["name"]: entry for entry in container["env"]}
    assert env["ZAPFLOW_NATS_URL"] == SHARED_ENV[0]
    assert env["ZAPFLOW_CONVERSATION_SHARD"]["value"] == "acme"
    assert json.loads(env["ZAPFLOW_CONVERSATION_TENANTS"]["value"]) == ["acme"]
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_two_tenants_get_distinct_workloads() -> None:
    first, second = build("acme", dedicated=True)[0], build("globex", dedicated=True)[0]
    assert first["metadata"]["name"] != second["metadata"]["name"]
    assert first["spec"]["selector"] != second["spec"]["selector"]
