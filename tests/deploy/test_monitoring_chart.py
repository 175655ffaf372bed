"""The chart's monitoring objects: ServiceMonitors that scrape every workload, the PrometheusRule of the
generated rules, the dashboards' ConfigMaps for Grafana's sidecar; each switched by monitoring.enabled
and its own enabled, and valid against the Prometheus Operator's CRD models (unknown fields refused)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor
from pydantic import ValidationError

from tests.deploy.chart import CHART_DIR, SCENARIOS, Object, by_component, of_kind, render, render_values, user_values
from zapflow.monitoring.alerts import RUNBOOK_BASE_URL
from zapflow.monitoring.generate import DASHBOARD_FILES, RULES_FILE

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = CHART_DIR / "ci" / "minimal-values.yaml"
PRODUCTION = CHART_DIR / "ci" / "production-values.yaml"
DASHBOARDS = sorted((ROOT / DASHBOARD_FILES).glob("*.json"))


def with_monitoring(scenario: Path = MINIMAL, **monitoring: Any) -> list[Object]:
    values = user_values([scenario])
    values["monitoring"] = {"enabled": True, **monitoring}
    return render_values(values)


def dashboard_config_maps(objects: list[Object]) -> list[Object]:
    return [item for item in of_kind(objects, "ConfigMap") if "grafana_dashboard" in item["metadata"]["labels"]]


def monitoring_objects(objects: list[Object]) -> list[Object]:
    return of_kind(objects, "ServiceMonitor") + of_kind(objects, "PrometheusRule") + dashboard_config_maps(objects)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda path: path.stem)
def test_the_scenarios_monitor_only_when_they_say_so(scenario: Path) -> None:
    objects = render([scenario])
    wanted = (user_values([scenario]).get("monitoring") or {}).get("enabled", False)
    assert bool(monitoring_objects(objects)) == wanted


@pytest.mark.parametrize("switched_off", ["serviceMonitor", "rules", "dashboards"])
def test_each_object_has_its_own_switch(switched_off: str) -> None:
    objects = with_monitoring(**{switched_off: {"enabled": False}})
    present = {
        "serviceMonitor": bool(of_kind(objects, "ServiceMonitor")),
        "rules": bool(of_kind(objects, "PrometheusRule")),
        "dashboards": bool(dashboard_config_maps(objects)),
    }
    assert present == {name: name != switched_off for name in present}


def test_a_service_monitor_scrapes_each_workload_on_its_service() -> None:
    objects = with_monitoring(PRODUCTION, serviceMonitor={"labels": {"release": "kube-prometheus-stack"}})
    monitors = by_component(objects, "ServiceMonitor")
    services = by_component(objects, "Service")
    assert set(monitors) == set(services)
    assert "operator" in monitors
    for name, monitor in monitors.items():
        ServiceMonitor.model_validate(monitor, extra="forbid")
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        selector = monitor["spec"]["selector"]["matchLabels"]
        matched = [
            other for other, service in services.items() if selector.items() <= service["metadata"]["labels"].items()
        ]
        assert matched == [name]
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [services[name]["metadata"]["namespace"]]}
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
        assert endpoint["port"] in {port["name"] for port in services[name]["spec"]["ports"]}


def metrics_token_ref(objects: list[Object], component: str) -> dict[str, str] | None:
    """The Secret key the workload's ZAPFLOW_METRICS_TOKEN comes from (None: /metrics is open)."""
    (container,) = by_component(objects, "Deployment")[component]["spec"]["template"]["spec"]["containers"]
    for variable in container.get("env", []):
        if variable["name"] == "ZAPFLOW_METRICS_TOKEN":
            reference: dict[str, str] = variable["valueFrom"]["secretKeyRef"]
            return reference
    return None


@pytest.mark.parametrize(
    "auth",
    [
        {},
        {"metricsToken": "scrape-me"},
        {"existingSecret": {"name": "zapflow-auth", "metricsTokenKey": "metrics-token"}},
    ],
    ids=["open", "inline-token", "existing-secret"],
)
def test_the_scrape_sends_the_metrics_token_the_workloads_ask_for(auth: dict[str, Any]) -> None:
    values = user_values([MINIMAL])
    values["auth"] = {**values["auth"], **auth}
    values["monitoring"] = {"enabled": True}
    objects = render_values(values)
    for name, monitor in by_component(objects, "ServiceMonitor").items():
        expected = metrics_token_ref(objects, name)
        (endpoint,) = monitor["spec"]["endpoints"]
        if expected is None:
            assert "authorization" not in endpoint
        else:
            assert endpoint["authorization"] == {"type": "Bearer", "credentials": expected}


@pytest.mark.parametrize(
    "base", ["https://git.example/zapflow/docs/runbooks", "https://git.example/zapflow/docs/runbooks/"]
)
def test_the_prometheus_rule_holds_the_generated_rules_with_the_runbooks_url(base: str) -> None:
    objects = with_monitoring(rules={"runbookBaseUrl": base, "labels": {"role": "alert-rules"}})
    (rule,) = of_kind(objects, "PrometheusRule")
    PrometheusRule.model_validate(rule, extra="forbid")
    assert rule["metadata"]["labels"]["role"] == "alert-rules"
    generated = (ROOT / RULES_FILE).read_text().replace(RUNBOOK_BASE_URL, base.rstrip("/"))
    assert rule["spec"] == yaml.safe_load(generated)
    urls = [
        item["annotations"]["runbook_url"]
        for group in rule["spec"]["groups"]
        for item in group["rules"]
        if "alert" in item
    ]
    assert urls and all(url.startswith("https://git.example/zapflow/docs/runbooks/zapflow-") for url in urls)


def test_the_dashboards_are_config_maps_for_grafanas_sidecar() -> None:
    objects = with_monitoring()
    maps = dashboard_config_maps(objects)
    assert len(maps) == len(DASHBOARDS) > 0
    shipped = {f"zapflow-{path.name}": json.loads(path.read_text()) for path in DASHBOARDS}
    found = {}
    for config_map in maps:
        kubernetes_validate.validate(config_map, "1.27.0", strict=True)
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["namespace"] == "zapflow"
        (key,) = config_map["data"]
        found[key] = json.loads(config_map["data"][key])
    assert found == shipped


def test_the_dashboards_namespace_labels_and_annotations_are_values() -> None:
    objects = with_monitoring(
        dashboards={
            "namespace": "grafana",
            # A null drops the default label, as for any value Helm merges.
            "labels": {"dashboards": "zapflow", "grafana_dashboard": None},
            "annotations": {"grafana_folder": "zapflow"},
        }
    )
    maps = [item for item in of_kind(objects, "ConfigMap") if item["metadata"].get("labels", {}).get("dashboards")]
    assert len(maps) == len(DASHBOARDS)
    for config_map in maps:
        assert config_map["metadata"]["namespace"] == "grafana"
        assert "grafana_dashboard" not in config_map["metadata"]["labels"]
        assert config_map["metadata"]["annotations"] == {"grafana_folder": "zapflow"}


def test_the_crd_models_refuse_unknown_fields() -> None:
    (monitor, *_) = of_kind(with_monitoring(), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["scrapeEvery"] = "30s"
    with pytest.raises(ValidationError, match="scrapeEvery"):
        ServiceMonitor.model_validate(monitor, extra="forbid")


def test_lint_is_clean_with_monitoring_on() -> None:
    values = user_values([PRODUCTION])
    values["monitoring"] = {"enabled": True}
    report = helm_python.lint(CHART_DIR, values, strict=True, kube_version="v1.33.0")
    assert report["errors"] == []
    assert [message for message in report["messages"] if message["severity"] >= 2] == []


@pytest.mark.parametrize(
    "monitoring",
    [
        {"enabled": "yes"},
        {"serviceMonitor": {"interval": "half a minute"}},
        {"rules": {"runbookBaseUrl": ""}},
        {"dashboards": {"labels": {"grafana_dashboard": 1}}},
        {"alerts": {}},
    ],
    ids=lambda values: json.dumps(values)[:50],
)
def test_the_schema_refuses_malformed_monitoring_values(monitoring: dict[str, Any]) -> None:
    values = user_values([MINIMAL])
    values["monitoring"] = monitoring
    with pytest.raises(helm_python.HelmValuesError):
        helm_python.Chart.load(CHART_DIR).validate_schema(values)
