"""The operator in the chart: its CRDs, Deployment, least RBAC, kopf peering object and NetworkPolicy."""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from tests.deploy.chart import CHART_DIR, NAMESPACE, ROOT, SCENARIOS, Object, chart, component, of_kind, render
from tests.deploy.test_chart_contract import container, parse, service_commands
from zapflow.operator import crd

OPERATOR = "zf-zapflow-operator"
KUBERNETES_VERSIONS = ("1.27.0", latest_version())
# What the operator may do in the namespace it serves (docs/operator.md, "RBAC"): (group, resource) -> verbs.
NAMESPACED_RULES = {
    ("zapflow.io", "bottenants"): {"get", "list", "watch", "patch"},
    ("zapflow.io", "bottenants/status"): {"get", "patch"},
    ("", "secrets"): {"get", "list", "watch"},
    ("", "configmaps"): {"get", "list", "watch"},
    ("", "events"): {"create"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("keda.sh", "scaledobjects"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"},
}
CLUSTER_RULES = {
    **{key: verbs for key, verbs in NAMESPACED_RULES.items() if key[1] != "kopfpeerings"},
    ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"get", "list", "watch"},
}


def operator_objects(objects: list[Object]) -> dict[str, Object]:
    found = {item["kind"]: item for item in objects if component(item) == "operator"}
    assert len(found) == len([item for item in objects if component(item) == "operator"]), "one object per kind"
    return found


def rules(role: Object) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, "no resourceNames or wildcards to reason about"
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def env_of(deployment: Object) -> dict[str, Any]:
    return {entry["name"]: entry.get("value", entry.get("valueFrom")) for entry in container(deployment)["env"]}


def chart_crds() -> dict[str, Object]:
    return {
        document["metadata"]["name"]: document
        for source in chart().crds
        for document in yaml.safe_load_all(source["data"])
        if document
    }


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_chart_ships_the_bottenant_and_peering_crds(version: str) -> None:
    crds = chart_crds()
    assert set(crds) == {crd.CRD_NAME, "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"}
    assert crds[crd.CRD_NAME] == crd.custom_resource_definition()
    for document in crds.values():
        kubernetes_validate.validate(document, version, strict=True)


def test_every_scenario_runs_the_operator_namespaced_by_default() -> None:
    for path in SCENARIOS:
        objects = operator_objects(render([path]))
        assert set(objects) == {
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "KopfPeering",
            "Deployment",
            "Service",  # its /metrics
            "PodDisruptionBudget",
            *(["NetworkPolicy"] if "netpol-off" not in path.name else []),
        }, path.name
        assert {item["metadata"]["namespace"] for item in objects.values()} == {NAMESPACE}


def test_the_operator_gets_the_least_rbac_and_its_own_token() -> None:
    objects = operator_objects(render([CHART_DIR / "ci" / "minimal-values.yaml"]))
    assert rules(objects["Role"]) == NAMESPACED_RULES
    binding = objects["RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": OPERATOR}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": OPERATOR, "namespace": NAMESPACE}]
    assert objects["ServiceAccount"]["automountServiceAccountToken"] is True
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) == (OPERATOR, True)
    documented = (ROOT / "docs" / "operator.md").read_text().split("## RBAC", 1)[1].split("\n## ", 1)[0]
    for _, resource in CLUSTER_RULES:
        assert f"`{resource}`" in documented, resource


def test_cluster_wide_the_operator_gets_a_cluster_role_and_a_cluster_peering() -> None:
    objects = operator_objects(render([CHART_DIR / "ci" / "minimal-values.yaml"], ["operator.clusterWide=true"]))
    assert rules(objects["ClusterRole"]) == CLUSTER_RULES
    assert objects["ClusterRoleBinding"]["roleRef"]["kind"] == "ClusterRole"
    assert "namespace" not in objects["ClusterKopfPeering"]["metadata"]
    env = env_of(objects["Deployment"])
    assert "ZAPFLOW_OPERATOR_NAMESPACE" not in env
    assert env["ZAPFLOW_OPERATOR_PEERING_NAME"] == objects["ClusterKopfPeering"]["metadata"]["name"]
    for kind in ("ClusterRole", "ClusterRoleBinding"):
        kubernetes_validate.validate(objects[kind], latest_version(), strict=True)


def test_the_served_namespace_holds_the_role_and_the_peering() -> None:
    objects = operator_objects(render([CHART_DIR / "ci" / "minimal-values.yaml"], ["operator.watchNamespace=tenants"]))
    for kind in ("Role", "RoleBinding", "KopfPeering"):
        assert objects[kind]["metadata"]["namespace"] == "tenants", kind
    assert objects["RoleBinding"]["subjects"][0]["namespace"] == NAMESPACE
    env = env_of(objects["Deployment"])
    assert env["ZAPFLOW_OPERATOR_NAMESPACE"] == "tenants"
    assert env["ZAPFLOW_OPERATOR_PEERING_NAME"] == objects["KopfPeering"]["metadata"]["name"]
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}, "kopf names each replica by its pod"


def test_the_peering_object_is_valid_for_its_crd() -> None:
    crds = chart_crds()
    for values, kind in (
        [[], "kopfpeerings.kopf.dev"],
        [["operator.clusterWide=true"], "clusterkopfpeerings.kopf.dev"],
    ):
        (peering,) = of_kind(
            render([CHART_DIR / "ci" / "minimal-values.yaml"], values), crds[kind]["spec"]["names"]["kind"]
        )
        (version,) = crds[kind]["spec"]["versions"]
        assert peering["apiVersion"] == f"kopf.dev/{version['name']}"
        jsonschema.validate(peering, version["schema"]["openAPIV3Schema"])
        assert ("namespace" in peering["metadata"]) == (crds[kind]["spec"]["scope"] == "Namespaced")


def test_the_operator_is_a_hot_standby_probed_on_kopfs_liveness_endpoint() -> None:
    deployment = operator_objects(render([CHART_DIR / "ci" / "minimal-values.yaml"]))["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    spec = container(deployment)
    args = spec["args"]
    assert args[0] == "operator"
    port = int(args[args.index("--port") + 1])
    assert spec["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    for probe in ("startupProbe", "livenessProbe"):
        assert spec[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    # An operator serves no traffic: a readiness probe would only take the standby "out" of nothing.
    assert "readinessProbe" not in spec
    assert "port" in {param.name for param in service_commands()["operator"].params}
    assert parse(args)["port"] == port


def test_the_operator_reaches_the_api_server_and_its_stores_and_nothing_reaches_it() -> None:
    policy = operator_objects(render([CHART_DIR / "ci" / "production-values.yaml"]))["NetworkPolicy"]["spec"]
    # Prometheus scrapes its /metrics; nothing else calls it.
    (scrape,) = policy["ingress"]
    assert scrape["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert scrape["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    ports = [{entry["port"] for entry in rule["ports"]} for rule in policy["egress"]]
    assert ports == [{53}, {4222}, {5432}, {443, 6443}, {8080}, {4318}]
    assert policy["egress"][3]["to"] == [{"ipBlock": {"cidr": "10.96.0.1/32"}}, {"ipBlock": {"cidr": "172.20.0.0/28"}}]


def test_the_operator_reaches_the_schedulers_admin_api_to_erase_a_deleted_tenant() -> None:
    objects = render([CHART_DIR / "ci" / "production-values.yaml"])
    operator = operator_objects(objects)
    env = env_of(operator["Deployment"])
    scheduler = {item["kind"]: item for item in objects if component(item) == "scheduler"}
    port = scheduler["Service"]["spec"]["ports"][0]["port"]
    assert env["ZAPFLOW_OPERATOR_SCHEDULER_URL"] == f"http://{scheduler['Service']['metadata']['name']}:{port}"
    assert env["ZAPFLOW_ADMIN_TOKEN"] == env_of(scheduler["Deployment"])["ZAPFLOW_ADMIN_TOKEN"]
    operator_pods = operator["Deployment"]["spec"]["selector"]["matchLabels"]
    scheduler_pods = scheduler["Deployment"]["spec"]["selector"]["matchLabels"]
    pod_port = container(scheduler["Deployment"])["ports"][0]["containerPort"]
    egress = operator["NetworkPolicy"]["spec"]["egress"]
    assert {
        "to": [{"podSelector": {"matchLabels": scheduler_pods}}],
        "ports": [{"port": pod_port, "protocol": "TCP"}],
    } in egress
    ingress = scheduler["NetworkPolicy"]["spec"]["ingress"]
    assert {
        "from": [{"podSelector": {"matchLabels": operator_pods}}],
        "ports": [{"port": "http", "protocol": "TCP"}],
    } in ingress
    without = render([CHART_DIR / "ci" / "production-values.yaml"], ["operator.enabled=false"])
    (policy,) = [item for item in without if component(item) == "scheduler" and item["kind"] == "NetworkPolicy"]
    assert len(policy["spec"]["ingress"]) == len(ingress) - 1


def test_the_operator_can_be_left_out() -> None:
    objects = render([CHART_DIR / "ci" / "minimal-values.yaml"], ["operator.enabled=false"])
    assert operator_objects(objects) == {}
    assert not of_kind(objects, "KopfPeering")
