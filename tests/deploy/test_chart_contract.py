"""The chart agrees with the code: commands, ports, probes, stores, KEDA's consumers and the network flows.

Nothing is started: the commands are parsed by the CLI's own parser, the routes are asked of each
service's app built by the service factory (no lifespan, so no connection), the consumers come
from the catalogue, and the rendered NetworkPolicies are read against a table of flows.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import pytest
import typer.main
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.deploy.chart import CHART_DIR, NAMESPACE, Object, by_component, component, of_kind, render
from zapflow.cli import app as cli_app
from zapflow.conversation.app import CONVERSATION
from zapflow.conversation.settings import ConversationSettings
from zapflow.gateway.app import gateway_service
from zapflow.gateway.settings import GatewayRole, GatewaySettings
from zapflow.handoff.app import HANDOFF
from zapflow.handoff.settings import HandoffSettings
from zapflow.knowledge.app import EMBEDDING, turn_consumer
from zapflow.knowledge.settings import EmbeddingSettings
from zapflow.platform import catalogue
from zapflow.platform.service import Service, create_app
from zapflow.platform.settings import ServiceSettings
from zapflow.recorder.app import RECORDER
from zapflow.recorder.settings import RecorderSettings
from zapflow.sandbox.app import sandbox_service
from zapflow.sandbox.settings import SandboxSettings
from zapflow.scheduler.app import SCHEDULER
from zapflow.scheduler.settings import SchedulerSettings

SCENARIO_DIR = CHART_DIR / "ci"


def scenario(name: str) -> Path:
    return SCENARIO_DIR / f"{name}-values.yaml"


# Each workload's service as its command builds it, with default settings.
SERVICES: dict[str, Callable[[], tuple[Service[Any, Any], ServiceSettings]]] = {
    "gateway": lambda: (gateway_service("webhook"), GatewaySettings(role="webhook")),
    "egress": lambda: (gateway_service("egress"), GatewaySettings(role="egress")),
    "conversation": lambda: (CONVERSATION, ConversationSettings()),
    "recorder": lambda: (RECORDER, RecorderSettings()),
    "embedding": lambda: (EMBEDDING, EmbeddingSettings()),
    "handoff": lambda: (HANDOFF, HandoffSettings()),
    "scheduler": lambda: (SCHEDULER, SchedulerSettings()),
    "sandbox": lambda: (sandbox_service(SandboxSettings()), SandboxSettings()),
}
# The catalogue's service name of each workload's consumers (egress is the gateway's egress role).
CATALOGUE_SERVICE = {"egress": catalogue.GATEWAY_SERVICE}
KEDA_SCALED_ON_LAG = ("egress", "conversation", "recorder", "embedding", "handoff")
OPERATOR = "operator"
# The operator's connections: the registry and timers (NATS), campaigns (PostgreSQL), the Kubernetes API,
# the scheduler's admin API (erasing a tenant deleted with spec.deletionPolicy Erase).
OPERATOR_DESTINATIONS = ("nats", "postgresql", "kubernetes-api", "scheduler")
STORE_VARIABLES = {"nats": "ZAPFLOW_NATS_URL", "redis": "ZAPFLOW_REDIS_URL", "postgresql": "ZAPFLOW_DATABASE_URL"}


@pytest.fixture(scope="module")
def staging() -> list[Object]:
    """The scenario with every workload, the sandbox included."""
    return render([scenario("staging-sandbox")])


@pytest.fixture(scope="module")
def deployments(staging: list[Object]) -> dict[str, Object]:
    """The services' workloads; the operator (kopf, no service app) is checked in test_operator_chart.py."""
    return {name: item for name, item in by_component(staging, "Deployment").items() if name != OPERATOR}


@pytest.fixture(scope="module")
def apps() -> dict[str, FastAPI]:
    return {name: create_app(*build()) for name, build in SERVICES.items()}


def container(deployment: Object) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = only
    return result


def stores_used(workload: str) -> set[str]:
    """The stores a workload's process connects to, from its service's Needs."""
    service, settings = SERVICES[workload]()
    needs = service.needs
    used = {"nats"} if needs.bus or needs.tenants else set()
    if needs.redis:
        used.add("redis")
    # The conversation service opens the store itself (for history), outside its Needs.
    if needs.database or getattr(settings, "history_from_store", False):
        used.add("postgresql")
    return used


# --- commands and ports ---


def cli() -> Any:
    """The `zapflow` command as its parser sees it (Typer's own click)."""
    return typer.main.get_command(cli_app)


def service_commands() -> dict[str, Any]:
    """Every `zapflow <command>` that runs a service: the ones that listen on --port."""
    return {
        name: command
        for name, command in cli().commands.items()
        if any(param.name == "port" for param in command.params)
    }


def parse(args: list[str]) -> dict[str, Any]:
    """The options `zapflow <args>` would run with; raises the parser's error on an unknown command or option."""
    command, rest = cli(), list(args)
    while rest and rest[0] in getattr(command, "commands", {}):
        command, rest = command.commands[rest[0]], rest[1:]
    params: dict[str, Any] = command.make_context(args[0], rest).params
    return params


def test_every_service_command_has_a_workload_and_every_workload_a_command(staging: list[Object]) -> None:
    commands = service_commands()
    services = {"gateway", "conversation", "recorder", "embedding", "handoff", "scheduler", "sandbox"}
    assert set(commands) == services | {OPERATOR}
    workloads = by_component(staging, "Deployment").values()
    used = {container(deployment)["args"][0] for deployment in workloads}
    assert used == set(commands)
    roles = {parse(container(deployment)["args"]).get("role") for deployment in workloads}
    # `all` is what `zapflow dev` runs; a cluster runs each role as its own workload.
    assert roles - {None} == set(get_args(GatewayRole)) - {"all"}


def test_every_workload_command_parses(staging: list[Object]) -> None:
    jobs = [job["spec"]["template"]["spec"]["containers"][0]["args"] for job in of_kind(staging, "Job")]
    assert jobs == [["db", "upgrade"]]
    workloads = by_component(staging, "Deployment").values()
    for args in [container(deployment)["args"] for deployment in workloads] + jobs:
        parse(args)
    with pytest.raises(Exception, match="bogus"):
        parse(["gateway", "--role", "bogus"])


def test_the_port_served_is_the_port_probed_and_exposed(deployments: dict[str, Object], staging: list[Object]) -> None:
    services = by_component(staging, "Service")
    for name, deployment in deployments.items():
        spec = container(deployment)
        args = spec["args"]
        port = int(args[args.index("--port") + 1])
        assert spec["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}], name
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert spec[probe]["httpGet"]["port"] == "http", (name, probe)
        assert [entry["targetPort"] for entry in services[name]["spec"]["ports"]] == ["http"]
        assert services[name]["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_probes_ask_the_services_own_endpoints(deployments: dict[str, Object], apps: dict[str, FastAPI]) -> None:
    assert set(deployments) == set(apps)
    for name, deployment in deployments.items():
        spec = container(deployment)
        assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert spec["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
        # Without its lifespan the app has no connections: /readyz answers, but not ready.
        client = TestClient(apps[name])
        assert client.get("/healthz").status_code == 200, name
        assert client.get("/readyz").status_code == 503, name
        assert client.get("/metrics").status_code == 200, name


def test_each_workload_gets_the_stores_its_service_uses(deployments: dict[str, Object]) -> None:
    for name, deployment in deployments.items():
        variables = {entry["name"] for entry in container(deployment)["env"]}
        given = {store for store, variable in STORE_VARIABLES.items() if variable in variables}
        assert given == stores_used(name), name


# --- Ingress ---


def ingress_paths(objects: list[Object], backend: str) -> list[tuple[str, str]]:
    return [
        (path["path"], path["pathType"])
        for ingress in of_kind(objects, "Ingress")
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
        if path["backend"]["service"]["name"] == f"zf-zapflow-{backend}"
    ]


def exposed(path: str, paths: list[tuple[str, str]]) -> bool:
    """Whether an Ingress with these paths routes a request for `path` (Kubernetes' Exact and Prefix)."""
    return any(
        path == rule if kind == "Exact" else path == rule or path.startswith(rule.rstrip("/") + "/")
        for rule, kind in paths
    )


def test_the_ingresses_route_to_served_paths_and_keep_operations_inside(apps: dict[str, FastAPI]) -> None:
    production = render([scenario("production")])
    webhook, inbox = ingress_paths(production, "gateway"), ingress_paths(production, "handoff")
    assert webhook == [("/webhook/whatsapp", "Exact")]
    assert TestClient(apps["gateway"]).post("/webhook/whatsapp", content=b"{}").status_code != 404
    handoff = TestClient(apps["handoff"], follow_redirects=False)
    for path in ("/", "/inbox", "/inbox/", "/inbox/inbox.js", "/api/v1/me", "/api/v1/session"):
        assert exposed(path, inbox), path
        assert handoff.get(path).status_code != 404, path
    for path in ("/healthz", "/readyz", "/metrics"):
        assert not exposed(path, inbox) and not exposed(path, webhook), path


# --- KEDA ---


def test_keda_scales_each_workload_on_its_own_declared_consumers() -> None:
    scaled = by_component(render([scenario("production")]), "ScaledObject")
    declared = {(spec.stream.name, spec.durable): spec.service for spec in catalogue.ALL_CONSUMERS}
    for name in KEDA_SCALED_ON_LAG:
        triggers = scaled[name]["spec"]["triggers"]
        named = {
            (t["metadata"]["stream"], t["metadata"]["consumer"]) for t in triggers if t["type"] == "nats-jetstream"
        }
        assert named <= set(declared), f"{name} names consumers the catalogue does not declare: {named - set(declared)}"
        service = CATALOGUE_SERVICE.get(name, name)
        assert named == {consumer for consumer, owner in declared.items() if owner == service}, name
        assert "fallback" in scaled[name]["spec"]
    gateway = scaled["gateway"]["spec"]
    assert [trigger["type"] for trigger in gateway["triggers"]] == ["cpu"]
    assert "fallback" not in gateway, "KEDA refuses a fallback on CPU triggers"


def test_a_shard_of_embedding_scales_on_the_shards_own_consumer() -> None:
    shard = ["embedding.env.ZAPFLOW_EMBEDDING_TENANTS=acme", "embedding.env.ZAPFLOW_EMBEDDING_SHARD=big"]
    scaled = by_component(render([scenario("production")], shard), "ScaledObject")["embedding"]
    (trigger,) = scaled["spec"]["triggers"]
    expected = turn_consumer(EmbeddingSettings(tenants=["acme"], shard="big"))
    assert (trigger["metadata"]["stream"], trigger["metadata"]["consumer"]) == (expected.stream.name, expected.durable)


# --- NetworkPolicies ---

CLUSTER_DNS = "kube-dns"


@dataclass(frozen=True)
class Endpoint:
    """One end of a connection: a pod (namespace, labels, named ports) or an address outside the cluster."""

    name: str
    ip: str
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace} if self.namespace else {}


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"the flow table reads matchLabels only: {selector}"
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def peer_matches(peer: Mapping[str, Any], policy_namespace: str, endpoint: Endpoint) -> bool:
    if "ipBlock" in peer:
        address = ipaddress.ip_address(endpoint.ip)
        block = peer["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(cidr) for cidr in block.get("except", [])
        )
    if endpoint.namespace is None:
        return False
    if "namespaceSelector" in peer:
        in_namespace = selects(peer["namespaceSelector"], endpoint.namespace_labels)
    else:
        in_namespace = endpoint.namespace == policy_namespace
    return in_namespace and selects(peer.get("podSelector", {}), endpoint.labels)


def port_matches(ports: list[Mapping[str, Any]] | None, port: int, protocol: str, target: Endpoint) -> bool:
    if not ports:
        return True
    for entry in ports:
        number = target.ports.get(entry["port"]) if isinstance(entry["port"], str) else entry["port"]
        if number == port and entry.get("protocol", "TCP") == protocol:
            return True
    return False


def allows(policies: list[Object], pod: Endpoint, direction: str, peer: Endpoint, port: int, protocol: str) -> bool:
    """Whether the policies selecting `pod` admit this connection in one direction (no policy: all)."""
    selecting = [
        policy
        for policy in policies
        if pod.namespace == policy["metadata"]["namespace"]
        and direction in policy["spec"]["policyTypes"]
        and selects(policy["spec"]["podSelector"], pod.labels)
    ]
    if not selecting:
        return True
    rules_key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    target = peer if direction == "Egress" else pod
    return any(
        port_matches(rule.get("ports"), port, protocol, target)
        and (
            not rule.get(peers_key)
            or any(peer_matches(p, policy["metadata"]["namespace"], peer) for p in rule[peers_key])
        )
        for policy in selecting
        for rule in policy["spec"].get(rules_key) or []
    )


def admitted(policies: list[Object], source: Endpoint, target: Endpoint, port: int, protocol: str = "TCP") -> bool:
    return allows(policies, source, "Egress", target, port, protocol) and allows(
        policies, target, "Ingress", source, port, protocol
    )


def pod(name: str, namespace: str, labels: Mapping[str, str], ip: str) -> Endpoint:
    return Endpoint(name=name, ip=ip, namespace=namespace, labels=labels)


# What runs around zapflow, as the chart's default selectors and the ci/ scenarios describe it.
OUTSIDE = {
    "controller": pod("controller", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}, "10.244.9.1"),
    "prometheus": pod("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}, "10.244.9.2"),
    "ops": pod("ops", "ops", {"app": "toolbox"}, "10.244.9.3"),
    "qa": pod("qa", "qa", {"app": "browser"}, "10.244.9.4"),
    "stranger": pod("stranger", NAMESPACE, {"app": "other"}, "10.244.9.5"),
}
# (endpoint, port, protocol)
DESTINATIONS: dict[str, tuple[Endpoint, int, str]] = {
    "dns": (pod(CLUSTER_DNS, "kube-system", {"k8s-app": "kube-dns"}, "10.244.8.1"), 53, "UDP"),
    "nats": (pod("nats", "nats", {"app.kubernetes.io/name": "nats"}, "10.244.8.2"), 4222, "TCP"),
    "nats-monitoring": (pod("nats", "nats", {"app.kubernetes.io/name": "nats"}, "10.244.8.2"), 8222, "TCP"),
    "redis": (pod("redis", "redis", {"app.kubernetes.io/name": "redis"}, "10.244.8.3"), 6379, "TCP"),
    "postgresql": (
        pod("postgresql", "postgresql", {"app.kubernetes.io/name": "postgresql"}, "10.244.8.4"),
        5432,
        "TCP",
    ),
    "otel": (pod("otel", "observability", {"app": "otel-collector"}, "10.244.8.5"), 4318, "TCP"),
    "graph-api": (Endpoint("graph.facebook.com", "157.240.22.19"), 443, "TCP"),
    "public": (Endpoint("api.openai.com", "104.18.6.192"), 443, "TCP"),
    "metadata": (Endpoint("cloud metadata", "169.254.169.254"), 80, "TCP"),
    "kubernetes-api": (Endpoint("kubernetes", "10.96.0.1"), 443, "TCP"),
}
# Who calls what on the Internet, from the code: egress the Graph API; conversation the tenants' LLM
# (openai responder); embedding a remote embeddings API; handoff the tenants' agent webhooks.
INTERNET_CLIENTS = {"egress": "graphApi", "conversation": "llm", "embedding": "llm", "handoff": "notifications"}


def zapflow_pods(objects: list[Object]) -> dict[str, Endpoint]:
    pods = {}
    for index, item in enumerate(of_kind(objects, "Deployment") + of_kind(objects, "Job")):
        name = component(item)
        assert name is not None
        labels = item["spec"]["template"]["metadata"]["labels"]
        pods[name] = Endpoint(name, f"10.244.1.{index + 1}", NAMESPACE, labels, {"http": 8080})
    return pods


def expected_flows(name: str, pods: Mapping[str, Endpoint]) -> set[tuple[str, str]]:
    """The flows a scenario must admit, as (source, destination) names; every other one must be refused."""
    workloads = set(pods) - {"migrations", OPERATOR}
    flows = {(source, "dns") for source in pods}
    if OPERATOR in pods:
        flows |= {(OPERATOR, target) for target in OPERATOR_DESTINATIONS}
        flows.add(("prometheus", OPERATOR))  # its /metrics
        if name != "production":
            # The API server's default peer is any address on its ports: 443 reaches the Internet too.
            flows |= {(OPERATOR, "graph-api"), (OPERATOR, "public")}
    flows |= {("prometheus", workload) for workload in workloads}
    flows |= {("controller", "gateway"), ("controller", "handoff")}
    flows |= {(workload, store) for workload in workloads for store in stores_used(workload)}
    flows.add(("migrations", "postgresql"))
    internet = dict(INTERNET_CLIENTS)
    if name == "production":
        # Only Meta's ranges for the Graph API; the LLM and notifications keep the public Internet.
        flows |= {(workload, "otel") for workload in workloads | {OPERATOR}}
        flows.add(("ops", "scheduler"))
        flows.add(("egress", "graph-api"))
        del internet["egress"]
    if name == "staging-sandbox":
        # The sandbox is the Graph API: egress reaches it and no longer the Internet.
        flows |= {("egress", "sandbox"), ("sandbox", "gateway"), ("qa", "sandbox")}
        del internet["egress"]
    flows |= {(workload, target) for workload in internet for target in ("graph-api", "public")}
    return flows


def flow_table(objects: list[Object]) -> Iterator[tuple[str, str, bool]]:
    """Every connection from or to a zapflow pod, and whether the rendered policies admit it."""
    policies = of_kind(objects, "NetworkPolicy")
    pods = zapflow_pods(objects)
    targets = {name: (endpoint, 8080, "TCP") for name, endpoint in pods.items() if name != "migrations"}
    targets |= DESTINATIONS
    sources = {**pods, **OUTSIDE}
    for source_name, source in sources.items():
        for target_name, (target, port, protocol) in targets.items():
            if source_name in pods or target_name in pods:
                yield source_name, target_name, admitted(policies, source, target, port, protocol)


@pytest.mark.parametrize("name", ["minimal", "production", "staging-sandbox"])
def test_network_policies_admit_the_required_flows_and_nothing_else(name: str) -> None:
    objects = render([scenario(name)])
    expected = expected_flows(name, zapflow_pods(objects))
    wrong = [
        f"{source} -> {target}: {'admitted' if allowed else 'refused'}"
        for source, target, allowed in flow_table(objects)
        if allowed != ((source, target) in expected)
    ]
    assert wrong == []


def test_the_flow_table_is_not_vacuous() -> None:
    # Without policies everything is admitted: the table must then disagree with the expectations.
    objects = render([scenario("netpol-off")])
    expected = expected_flows("netpol-off", zapflow_pods(objects))
    refused_when_enforced = [(s, t) for s, t, allowed in flow_table(objects) if allowed and (s, t) not in expected]
    assert ("stranger", "conversation") in refused_when_enforced
    assert ("gateway", "postgresql") in refused_when_enforced
