"""charts/zapflow renders with the real Helm engine for every ci/ scenario, lints clean, and every object is valid.

Built-in kinds are checked against the Kubernetes schemas (kubernetes-validate, strict: unknown
fields refused) for the oldest Kubernetes the chart supports and the newest known; KEDA's objects
against models generated from KEDA's CRDs, unknown fields refused.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication
from kubernetes_validate.utils import latest_version

from tests.deploy.chart import (
    CHART_CRD_API_VERSIONS,
    CHART_DIR,
    SCENARIOS,
    Object,
    by_component,
    chart,
    of_kind,
    render,
    render_values,
    user_values,
)

# The chart's kubeVersion floor (Chart.yaml) and the newest schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.27.0", latest_version())
KEDA_MODELS = {"ScaledObject": ScaledObject, "TriggerAuthentication": TriggerAuthentication}
# The keys KEDA's nats-jetstream scaler reads (keda.sh/docs/2.16/scalers/nats-jetstream).
NATS_JETSTREAM_METADATA = {
    "natsServerMonitoringEndpoint",
    "account",
    "stream",
    "consumer",
    "lagThreshold",
    "activationLagThreshold",
    "useHttps",
}
# What a TriggerAuthentication may give that scaler.
NATS_JETSTREAM_AUTH_PARAMETERS = {"natsServerMonitoringEndpoint", "account"}
WORKLOADS = ("gateway", "egress", "conversation", "recorder", "embedding", "handoff", "scheduler")
LAG_SCALED = ("egress", "conversation", "recorder", "embedding", "handoff")
MINIMAL = {
    "postgresql": {"url": "postgresql+asyncpg://u:p@db:5432/zapflow"},
    "auth": {"adminToken": "a", "pseudonymSecret": "p"},
}


def scenario(name: str) -> Path:
    return CHART_DIR / "ci" / f"{name}-values.yaml"


@pytest.fixture(scope="module", params=SCENARIOS, ids=lambda path: path.stem)
def rendered(request: pytest.FixtureRequest) -> tuple[Path, list[Object]]:
    return request.param, render([request.param])


def test_every_scenario_renders_uniquely_named_objects(rendered: tuple[Path, list[Object]]) -> None:
    _, objects = rendered
    names = [(item["apiVersion"], item["kind"], item["metadata"]["name"]) for item in objects]
    assert len(names) == len(set(names))
    assert {"Deployment", "Service", "ServiceAccount", "ConfigMap", "Job"} <= {item["kind"] for item in objects}
    assert all(item["metadata"]["namespace"] == "zapflow" for item in objects)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_built_in_objects_validate_against_the_kubernetes_schemas(
    rendered: tuple[Path, list[Object]], version: str
) -> None:
    _, objects = rendered
    for item in objects:
        if item["kind"] not in KEDA_MODELS and item["apiVersion"] not in CHART_CRD_API_VERSIONS:
            validate_once(json.dumps(item, sort_keys=True), version)


@functools.cache
def validate_once(item: str, version: str) -> None:
    """Scenarios share most objects: each distinct one is validated once per version."""
    kubernetes_validate.validate(json.loads(item), version, strict=True)


def test_keda_objects_validate_against_the_keda_crd_models(rendered: tuple[Path, list[Object]]) -> None:
    _, objects = rendered
    for item in objects:
        if item["kind"] in KEDA_MODELS:
            KEDA_MODELS[item["kind"]].model_validate(item, extra="forbid")
            assert item["apiVersion"] == "keda.sh/v1alpha1"


def test_keda_triggers_use_only_the_scalers_metadata(rendered: tuple[Path, list[Object]]) -> None:
    _, objects = rendered
    for scaled in of_kind(objects, "ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            metadata = trigger["metadata"]
            assert all(isinstance(value, str) for value in metadata.values()), "KEDA metadata values are strings"
            if trigger["type"] == "nats-jetstream":
                assert set(metadata) <= NATS_JETSTREAM_METADATA
                assert {"account", "stream", "consumer", "lagThreshold"} <= set(metadata)
                endpoint = metadata.get("natsServerMonitoringEndpoint")
                assert (endpoint is None) == ("authenticationRef" in trigger), "the endpoint comes from one place"
                if endpoint is not None:
                    assert re.fullmatch(r"[A-Za-z0-9.-]+:\d+", endpoint), "host:port without a scheme"
    for authentication in of_kind(objects, "TriggerAuthentication"):
        parameters = {ref["parameter"] for ref in authentication["spec"]["secretTargetRef"]}
        assert parameters <= NATS_JETSTREAM_AUTH_PARAMETERS


def test_lint_is_clean(rendered: tuple[Path, list[Object]]) -> None:
    path, _ = rendered
    report = helm_python.lint(CHART_DIR, user_values([path]), strict=True, kube_version="v1.33.0")
    assert report["errors"] == []
    # Severity 1 is information (Chart.yaml's icon); 2 and above are warnings and errors.
    assert [message for message in report["messages"] if message["severity"] >= 2] == []


def test_the_schema_accepts_every_scenario() -> None:
    for path in SCENARIOS:
        chart().validate_schema(user_values([path]))


@pytest.mark.parametrize(
    "values",
    [
        {"gateway": {"replicas": 3}},
        {"gateway": {"autoscaling": {"lagThreshold": 10}}},
        {"scheduler": {"autoscaling": {"enabled": True}}},
        {"nats": {"monitoringEndpoint": "http://nats:8222"}},
        {"egress": {"probes": {"readiness": {"path": "/other"}}}},
        {"networkPolicy": {"egress": {"nats": {"to": [], "ports": [{"port": 4222, "protocol": "HTTP"}]}}}},
        {"config": {"logLevel": "verbose"}},
        {"unknown": True},
    ],
    ids=lambda values: str(values)[:60],
)
def test_the_schema_refuses_unknown_or_malformed_values(values: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        chart().validate_schema({**MINIMAL, **values})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "postgresql.url is required"),
        ({"postgresql": {"url": "postgresql://db/zapflow"}}, "auth.adminToken is required"),
        ({**MINIMAL, "gateway": {"autoscaling": {"enabled": True}}}, "gateway.resources.requests.cpu"),
        (
            {**MINIMAL, "keda": {"enabled": True}, "gateway": {"autoscaling": {"enabled": True}}},
            "gateway.resources.requests.cpu",
        ),
        (
            {
                **MINIMAL,
                "egress": {"resources": {"requests": {"cpu": "1"}}, "autoscaling": {"enabled": True, "minReplicas": 0}},
            },
            "minReplicas 0 needs KEDA",
        ),
        ({**MINIMAL, "scheduler": {"replicaCount": 2}}, "ReadWriteOnce"),
    ],
    ids=[
        "no-database",
        "no-secrets",
        "hpa-without-cpu-request",
        "keda-cpu-without-request",
        "hpa-to-zero",
        "scheduler-rwo",
    ],
)
def test_an_unusable_release_fails_to_render_with_a_reason(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
        render_values(values)


def test_optional_objects_follow_their_values() -> None:
    minimal = render([scenario("minimal")])
    assert not of_kind(minimal, "ScaledObject") and not of_kind(minimal, "HorizontalPodAutoscaler")
    assert not of_kind(minimal, "Ingress")
    assert set(by_component(minimal, "NetworkPolicy")) == {*WORKLOADS, "operator", "migrations"}
    assert "sandbox" not in by_component(minimal, "Deployment")

    production = render([scenario("production")])
    assert set(by_component(production, "ScaledObject")) == {"gateway", *LAG_SCALED}
    assert not of_kind(production, "HorizontalPodAutoscaler")
    assert len(of_kind(production, "TriggerAuthentication")) == 1
    assert {item["spec"]["rules"][0]["host"] for item in of_kind(production, "Ingress")} == {
        "whatsapp.acme.example",
        "inbox.acme.example",
    }

    keda_off = render([scenario("keda-off")])
    assert not of_kind(keda_off, "ScaledObject")
    assert set(by_component(keda_off, "HorizontalPodAutoscaler")) == {"gateway", *LAG_SCALED}

    assert not of_kind(render([scenario("netpol-off")]), "NetworkPolicy")
    assert "sandbox" in by_component(render([scenario("staging-sandbox")]), "Deployment")


def test_an_autoscaled_deployment_leaves_its_replicas_to_the_autoscaler() -> None:
    deployments = by_component(render([scenario("production")]), "Deployment")
    assert all("replicas" not in deployments[name]["spec"] for name in ("gateway", *LAG_SCALED))
    assert deployments["scheduler"]["spec"]["replicas"] == 1


def secret_sources(deployment: Object) -> dict[str, tuple[str, str]]:
    """Each variable a Deployment's container reads from a Secret, with the Secret's name and key."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {
        entry["name"]: (entry["valueFrom"]["secretKeyRef"]["name"], entry["valueFrom"]["secretKeyRef"]["key"])
        for entry in container["env"]
        if "valueFrom" in entry
    }


def test_urls_and_tokens_come_from_the_users_secrets_or_the_charts_own() -> None:
    production = render([scenario("production")])
    assert [item["metadata"]["name"] for item in of_kind(production, "Secret")] == []
    sources = secret_sources(by_component(production, "Deployment")["scheduler"])
    assert sources == {
        "ZAPFLOW_NATS_URL": ("zapflow-connections", "nats-url"),
        "ZAPFLOW_REDIS_URL": ("zapflow-connections", "redis-url"),
        "ZAPFLOW_DATABASE_URL": ("zapflow-connections", "database-url"),
        "ZAPFLOW_ADMIN_TOKEN": ("zapflow-auth", "admin-token"),
        "ZAPFLOW_PSEUDONYM_SECRET": ("zapflow-auth", "pseudonym-secret"),
        "ZAPFLOW_METRICS_TOKEN": ("zapflow-auth", "metrics-token"),
    }

    minimal = render([scenario("minimal")])
    secrets = {item["metadata"]["name"]: item["stringData"] for item in of_kind(minimal, "Secret")}
    own, migrations = secrets["zf-zapflow"], secrets["zf-zapflow-migrations"]
    for variable, (name, key) in secret_sources(by_component(minimal, "Deployment")["scheduler"]).items():
        assert name == "zf-zapflow" and key in own, variable
    assert (
        own["postgresql-url"] == migrations["postgresql-url"] == user_values([scenario("minimal")])["postgresql"]["url"]
    )
    assert "ZAPFLOW_METRICS_TOKEN" not in secret_sources(by_component(minimal, "Deployment")["scheduler"])


def test_no_template_asks_the_cluster_what_it_has() -> None:
    # An offline render has no CRD API groups: a Capabilities gate would hide objects from every test.
    for template in (CHART_DIR / "templates").iterdir():
        assert ".Capabilities" not in template.read_text(), template.name


def test_every_pod_runs_locked_down() -> None:
    for item in render([scenario("staging-sandbox")]):
        if item["kind"] not in ("Deployment", "Job"):
            continue
        pod = item["spec"]["template"]["spec"]
        # Only the operator calls the Kubernetes API.
        assert pod["automountServiceAccountToken"] is (item["metadata"]["name"] == "zf-zapflow-operator")
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            # The root filesystem is read-only: /tmp is the pod's own emptyDir.
            assert any(mount["mountPath"] == "/tmp" for mount in container["volumeMounts"])  # noqa: S108
            assert "resources" not in container, "resources are left to the user"
