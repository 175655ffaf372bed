"""Every metric a dashboard or an alert uses exists: zapflow's in the code's Prometheus registry (with the
labels the query names), the exporters' in the list below (from their sources); and every zapflow metric
is on a dashboard.

PromQL is read by a small tokenizer: strings, label matchers, ranges and grouping clauses are set apart,
then every name not followed by `(` (a function or an aggregation) and not a keyword is a metric.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from zapflow.monitoring.alerts import NATS_EXPORTER_PREFIXES
from zapflow.monitoring.generate import DASHBOARD_FILES, RULES_FILE
from zapflow.platform import metrics

ROOT = Path(__file__).resolve().parents[2]

# Labels Prometheus adds to every series it scrapes from a ServiceMonitor's targets.
SCRAPE_LABELS = {"namespace", "pod", "service", "container", "endpoint", "job", "instance"}

_JETSTREAM_SERVER = {"server_id", "server_name", "cluster", "domain", "meta_leader", "is_meta_leader"}
_JETSTREAM_STREAM = _JETSTREAM_SERVER | {"account", "account_id", "stream_name", "stream_leader", "is_stream_leader"}
_JETSTREAM_CONSUMER = _JETSTREAM_STREAM | {
    "consumer_name",
    "consumer_leader",
    "is_consumer_leader",
    "consumer_desc",
    "consumer_created",
}
_JETSTREAM = {
    "consumer_num_pending": _JETSTREAM_CONSUMER,
    "consumer_num_ack_pending": _JETSTREAM_CONSUMER,
    "consumer_num_redelivered": _JETSTREAM_CONSUMER,
    "stream_total_messages": _JETSTREAM_STREAM,
    "stream_total_bytes": _JETSTREAM_STREAM,
}
# Metrics of the exporters beside zapflow, with their labels (besides the scrape's): prometheus-nats-exporter
# (-jsz=all, collector/jsz.go; jetstream_* by default, nats_* with the NATS chart's -prefix=nats),
# redis_exporter (exporter/exporter.go), kube-state-metrics and cAdvisor.
EXPORTER_METRICS: dict[str, set[str]] = {
    **{f"{prefix}_{name}": labels for prefix in NATS_EXPORTER_PREFIXES for name, labels in _JETSTREAM.items()},
    "redis_up": set(),
    "redis_memory_used_bytes": set(),
    "redis_memory_max_bytes": set(),
    "redis_connected_clients": set(),
    "redis_blocked_clients": set(),
    "redis_commands_processed_total": set(),
    "redis_commands_total": {"cmd"},
    "redis_commands_duration_seconds_total": {"cmd"},
    "redis_keyspace_hits_total": set(),
    "redis_keyspace_misses_total": set(),
    "redis_evicted_keys_total": set(),
    "redis_rejected_connections_total": set(),
    "redis_aof_last_write_status": set(),
    "kube_pod_container_status_restarts_total": {"namespace", "pod", "container", "uid"},
    "container_cpu_usage_seconds_total": {"namespace", "pod", "container", "id", "image", "name", "cpu"},
    # prometheus_client's process collector, in every zapflow process (Linux).
    "process_start_time_seconds": set(),
}

# A selector by name pattern: `{__name__=~"(a|b)_rest", ...}`, the only kind of pattern the queries use.
NAME_PATTERN = re.compile(r'__name__=~"\(([\w|]+)\)(\w+)"')
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)?\s*\{([^{}]*)\}")
MATCHER_LABEL = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
RANGE = re.compile(r"\[[^\[\]]*\]")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
NAME = re.compile(r"(?<![\w.:$])([a-zA-Z_:][\w:]*)(\s*\()?")
KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
    "atan2",
}


def selectors(expr: str) -> Iterator[tuple[str, set[str]]]:
    """Each metric the expression reads, with the label names its matchers use (none for a bare name)."""
    patterns = iter(NAME_PATTERN.findall(expr))
    text = STRING.sub('""', expr)
    for match in SELECTOR.finditer(text):
        labels = set(MATCHER_LABEL.findall(match.group(2)))
        if match.group(1) and match.group(1) not in KEYWORDS:
            yield match.group(1), labels
        elif not match.group(1):
            assert "__name__" in labels, f"a selector without a name: {expr}"
            prefixes, rest = next(patterns)
            for prefix in prefixes.split("|"):
                yield prefix + rest, labels - {"__name__"}
    text = GROUPING.sub(" ", RANGE.sub(" ", SELECTOR.sub(lambda match: f" {match.group(1) or ''} ", text)))
    for match in NAME.finditer(text):
        name, call = match.groups()
        if not call and name.lower() not in KEYWORDS:
            yield name, set()


def dashboard_queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel query and every query variable of every dashboard."""
    for path in sorted((ROOT / DASHBOARD_FILES).glob("*.json")):
        model = json.loads(path.read_text())
        for panel in model["panels"]:
            for target in panel.get("targets") or []:
                yield f"{path.stem}: {panel['title']}", target["expr"]
        for variable in model["templating"]["list"]:
            if variable["type"] == "query":
                label_values = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["query"])
                assert label_values, f"{path.stem}: ${variable['name']} is not label_values(query, label)"
                yield f"{path.stem}: ${variable['name']}", label_values.group(1)


def rules() -> list[dict[str, str]]:
    groups = yaml.safe_load((ROOT / RULES_FILE).read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def rule_queries() -> Iterator[tuple[str, str]]:
    for rule in rules():
        yield f"rule {rule.get('alert') or rule.get('record')}", rule["expr"]


def zapflow_metrics() -> dict[str, set[str]]:
    """Every series name the code exports (counters' _total, histograms' _bucket/_sum/_count), with its labels."""
    families = {family.name: family.type for family in REGISTRY.collect() if family.name.startswith("zapflow_")}
    labels = {
        wrapper._name: set(wrapper._labelnames)
        for wrapper in vars(metrics).values()
        if isinstance(wrapper, MetricWrapperBase)
    }
    series: dict[str, set[str]] = {}
    for name, kind in families.items():
        if kind == "counter":
            series[f"{name}_total"] = labels[name]
        elif kind == "histogram":
            series[f"{name}_bucket"] = labels[name] | {"le"}
            series[f"{name}_sum"] = series[f"{name}_count"] = labels[name]
        else:
            series[name] = labels[name]
    return series


def allowed_labels(own: set[str]) -> set[str]:
    """A metric's labels once scraped: a label that meets a scrape label is kept as exported_<name>."""
    return own - SCRAPE_LABELS | SCRAPE_LABELS | {f"exported_{name}" for name in own & SCRAPE_LABELS}


def test_the_tokenizer_finds_metrics_and_labels_and_skips_the_rest() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, tenant) (rate(a_bucket{tenant=~"$tenant", x="by(y)"}[$__rate_interval])))'
        " / ignoring (z) group_left () b offset 5m and on (namespace) max_over_time(c[1h]) > bool 1e3"
    )
    assert list(selectors(expr)) == [("a_bucket", {"tenant", "x"}), ("a_bucket", set()), ("b", set()), ("c", set())]
    by_pattern = 'max by (stream_name) ({__name__=~"(jetstream|nats)_stream_total_bytes", stream_name=~"ZF_.+"})'
    assert list(selectors(by_pattern)) == [
        ("jetstream_stream_total_bytes", {"stream_name"}),
        ("nats_stream_total_bytes", {"stream_name"}),
    ]


def test_the_code_registers_the_metrics() -> None:
    assert "zapflow_conversation_turn_latency_seconds_bucket" in zapflow_metrics()
    assert "zapflow_gateway_webhook_requests_total" in zapflow_metrics()
    # The operator's readiness is read on its youngest replica: every process exports its start time.
    assert "process_start_time_seconds" in {family.name for family in REGISTRY.collect()}


@pytest.mark.parametrize("source", ["dashboards", "rules"])
def test_every_metric_used_exists_with_the_labels_used(source: str) -> None:
    queries = list(dashboard_queries() if source == "dashboards" else rule_queries())
    assert queries
    known = {name: allowed_labels(labels) for name, labels in zapflow_metrics().items()}
    known |= {name: labels | SCRAPE_LABELS for name, labels in EXPORTER_METRICS.items()}
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    problems = []
    for where, expr in queries:
        for name, labels in selectors(expr):
            if name in recorded:
                continue
            if name not in known:
                problems.append(f"{where}: no metric {name}")
            elif labels - known[name]:
                problems.append(f"{where}: {name} has no label {sorted(labels - known[name])}")
    assert problems == []


def test_every_zapflow_metric_is_on_a_dashboard() -> None:
    shown = {name for _, expr in dashboard_queries() for name, _ in selectors(expr)}
    families = {name for name in zapflow_metrics() if not name.endswith(("_sum", "_count"))}
    missing = {name for name in families if name not in shown and name.removesuffix("_bucket") + "_count" not in shown}
    assert missing == set()
