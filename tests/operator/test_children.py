"""The dedicated conversation workload the operator builds for a tenant: copies of the chart's shared
conversation objects, valid for Kubernetes and KEDA, owned by the tenant, scaled on its own consumer."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from kubernetes_validate.utils import latest_version

from tests.deploy.chart import CHART_DIR, NAMESPACE, render
from zapflow.operator import children, crd
from zapflow.platform import catalogue
from zapflow.tenants.model import BotTenant

SHARED = "zf-zapflow-conversation"


def shared_objects(scenario: str = "production") -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The shared conversation Deployment and ScaledObject as the chart renders them for a scenario."""
    objects = render([CHART_DIR / "ci" / f"{scenario}-values.yaml"])
    found = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    return found[("Deployment", SHARED)], found.get(("ScaledObject", SHARED))


def tenant(name: str = "acme", **scaling: Any) -> tuple[BotTenant, dict[str, Any]]:
    """A BotTenant and the object the API server would hand the operator (with its uid)."""
    secret = {"secretKeyRef": {"name": f"{name}-whatsapp", "key": "token"}}
    document = {
        "apiVersion": f"{crd.GROUP}/{crd.VERSION}",
        "kind": crd.KIND,
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": "0b7c1a52-6f1e-4f63-9d0c-3c1f0c0ffee0"},
        "spec": {
            "whatsapp": {"phoneNumberId": "123", "appSecret": secret, "accessToken": secret, "verifyToken": secret},
            "scaling": scaling,
        },
    }
    return BotTenant.model_validate(document), document


def build(name: str = "acme", scenario: str = "production", **scaling: Any) -> list[dict[str, Any]]:
    model, body = tenant(name, **scaling)
    deployment, scaled = shared_objects(scenario)
    return children.dedicated_conversation(model.name, model.spec.scaling, body, deployment, scaled)


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
        assert item["metadata"]["name"] == f"{SHARED}-acme"
        assert item["metadata"]["namespace"] == NAMESPACE
        assert item["metadata"]["labels"]["zapflow.io/tenant"] == "acme"
        assert item["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "zapflow-operator"


def test_keda_scales_the_deployment_on_the_tenants_own_consumer_within_its_bounds() -> None:
    _, scaled = build(dedicated=True, minReplicas=2, maxReplicas=6)
    _, shared_scaled = shared_objects()
    assert shared_scaled is not None
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{SHARED}-acme"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 6)
    assert spec["fallback"]["replicas"] == 2
    (trigger,) = spec["triggers"]
    (shared_trigger,) = shared_scaled["spec"]["triggers"]
    consumer = catalogue.dedicated_conversation_consumer("acme")
    assert trigger["type"] == "nats-jetstream"
    assert trigger["metadata"]["stream"] == catalogue.CONVERSATION_INBOUND.stream.name
    assert trigger["metadata"]["consumer"] == consumer.durable == "conversation-acme"
    # The rest (the monitoring endpoint or its TriggerAuthentication, thresholds) is the shared workload's.
    unchanged = {k: v for k, v in trigger["metadata"].items() if k != "consumer"}
    assert unchanged == {k: v for k, v in shared_trigger["metadata"].items() if k != "consumer"}
    assert trigger.get("authenticationRef") == shared_trigger.get("authenticationRef")
    # The consumer sees this tenant's messages and no other's.
    assert consumer.filter_subjects == (catalogue.every(f"{catalogue.INBOUND_PREFIX}.acme"),)
    assert consumer.filter_subjects != catalogue.dedicated_conversation_consumer("acme-2").filter_subjects


def test_the_pods_run_what_the_shared_pods_run_for_this_tenant_alone() -> None:
    deployment, _ = build(dedicated=True)
    shared, _ = shared_objects()
    template, shared_template = deployment["spec"]["template"], shared["spec"]["template"]
    (container,) = template["spec"]["containers"]
    (shared_container,) = shared_template["spec"]["containers"]
    env = [entry for entry in container["env"] if entry["name"] != children.DEDICATED_TENANT_ENV]
    assert env == shared_container["env"]
    assert {"name": children.DEDICATED_TENANT_ENV, "value": "acme"} in container["env"]
    for field in ("image", "args", "resources", "securityContext", "livenessProbe", "readinessProbe"):
        assert container.get(field) == shared_container.get(field), field
    assert template["spec"]["securityContext"] == shared_template["spec"]["securityContext"]
    # The pods keep the shared pods' labels (Service, NetworkPolicy, ServiceMonitor), plus the tenant's...
    assert shared_template["metadata"]["labels"].items() <= template["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    # ...which the shared Deployment's selector leaves out, so the two never claim each other's pods.
    assert {"key": children.TENANT_LABEL, "operator": "DoesNotExist"} in shared["spec"]["selector"]["matchExpressions"]


def test_without_keda_the_deployment_keeps_its_minimum() -> None:
    (deployment,) = build(scenario="keda-off", dedicated=True, minReplicas=3, maxReplicas=5)
    assert deployment["spec"]["replicas"] == 3


def test_two_tenants_get_distinct_workloads() -> None:
    first, second = build("acme", dedicated=True)[0], build("globex", dedicated=True)[0]
    assert first["metadata"]["name"] != second["metadata"]["name"]
    assert first["spec"]["selector"] != second["spec"]["selector"]
