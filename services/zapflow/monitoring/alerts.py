"""The Prometheus rules zapflow ships: SLO recording rules, burn-rate alerts and the alerts on its failure signals.

The rules are data here and become `charts/zapflow/files/alerts.yaml` (a Prometheus rule file, which is
also the `spec` of the chart's PrometheusRule). Every alert carries `severity` (page or ticket) and a
runbook, docs/runbooks/<alert name in kebab case>.md, under a base URL the chart fills in.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from zapflow.platform import catalogue

Severity = Literal["page", "ticket"]

# The chart replaces this with `monitoring.rules.runbookBaseUrl`; Prometheus leaves it as text.
RUNBOOK_BASE_URL = "${RUNBOOK_BASE_URL}"

# Burn-rate windows (The Site Reliability Workbook, "Alerting on SLOs"): a page when a long and a short
# window both burn fast, a ticket when three days burn the budget at the rate that just spends it.
SLO_WINDOWS = ("5m", "30m", "1h", "6h", "3d")


@dataclass(frozen=True)
class BurnWindow:
    long: str
    short: str
    factor: float
    severity: Severity
    wait: str


BURN_WINDOWS = (
    BurnWindow("1h", "5m", 14.4, "page", "2m"),
    BurnWindow("6h", "30m", 6.0, "page", "15m"),
    BurnWindow("3d", "6h", 1.0, "ticket", "1h"),
)


@dataclass(frozen=True)
class Slo:
    """A service-level objective: the share of events that must be good, and how a window's error ratio is computed."""

    name: str
    alert: str
    objective: float
    what: str
    errors: str  # PromQL of the error ratio, with {window} for the range
    summary: str
    description: str

    def record(self, window: str) -> str:
        return f"zapflow_slo:{self.name}_errors:ratio_rate{window}"

    @property
    def budget(self) -> float:
        return round(1 - self.objective, 6)


# Turns are answered under this many seconds; it is a bucket bound of the turn latency histogram.
TURN_LATENCY_THRESHOLD_S = 5
# Prometheus 3 writes a bucket bound as `5.0`, older versions as the client exposes it (`5.0` too from
# Python): the pattern takes both spellings.
_LE_THRESHOLD = f'le=~"{TURN_LATENCY_THRESHOLD_S}(\\\\.0)?"'

TURN_LATENCY = Slo(
    name="turn_latency",
    alert="ZapflowTurnLatencyBudgetBurn",
    objective=0.99,
    what=f"99% of turns answered within {TURN_LATENCY_THRESHOLD_S} s of the debounce closing",
    errors=(
        "1 - (\n"
        "  sum by (namespace) (rate(zapflow_conversation_turn_latency_seconds_bucket{"
        + _LE_THRESHOLD
        + "}[{window}]))\n"
        "  / sum by (namespace) (rate(zapflow_conversation_turn_latency_seconds_count[{window}]))\n"
        ")"
    ),
    summary="Turns are slower than the SLO allows",
    description=(
        f"More than 1% of turns took longer than {TURN_LATENCY_THRESHOLD_S} s from the debounce closing to the"
        " answer being published, fast enough to spend the error budget early."
    ),
)

WEBHOOK_AVAILABILITY = Slo(
    name="webhook_availability",
    alert="ZapflowWebhookAvailabilityBudgetBurn",
    objective=0.999,
    what="99.9% of webhook POSTs answered without a 5xx (JetStream stored them)",
    errors=(
        'sum by (namespace) (rate(zapflow_gateway_webhook_requests_total{outcome="unavailable"}[{window}]))\n'
        "/ sum by (namespace) (rate(zapflow_gateway_webhook_requests_total[{window}]))"
    ),
    summary="The webhook answers 503 more than the SLO allows",
    description=(
        "More than 0.1% of Meta's webhook POSTs got a 503 (the event bus could not store them): Meta retries,"
        " but customers wait and the error budget is being spent early."
    ),
)

SLOS = (TURN_LATENCY, WEBHOOK_AVAILABILITY)


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    severity: Severity
    summary: str
    description: str
    wait: str = "0m"
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def runbook(self) -> str:
        return runbook_name(self.name)


def runbook_name(alert: str) -> str:
    """The runbook's file name: the alert's name in kebab case (ZapflowDeadLetters: zapflow-dead-letters.md)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", alert).lower() + ".md"


def new_or_increased(selector: str, window: str, by: str) -> str:
    """How much a counter grew in the window, a series born in it included (increase() misses its first value).

    The newborn series come first: `or` matches series without their names, and keeps the left side's.
    """
    return f"sum by ({by}) (\n  ({selector} unless {selector} offset {window})\n  or increase({selector}[{window}])\n)"


def consumer_pattern(durables: list[str]) -> str:
    """A regex matching the durables and their shards (`<durable>-<shard>`, a tenant's own `conversation-<tenant>`)."""
    return "(" + "|".join(sorted(durables)) + ")(-.+)?"


# The NATS exporter names its JetStream metrics jetstream_* by default; the official NATS Helm chart runs it
# with -prefix=nats, which makes them nats_*. Every query reads either.
NATS_EXPORTER_PREFIXES = ("jetstream", "nats")


def jetstream(metric: str, *matchers: str) -> str:
    """A selector of one of the NATS exporter's JetStream metrics (`consumer_num_pending`...), under either prefix."""
    name = f'__name__=~"({"|".join(NATS_EXPORTER_PREFIXES)})_{metric}"'
    return "{" + ", ".join((name, *matchers)) + "}"


def tenant_readiness(processes: str = "", tenants: str = "") -> str:
    """Each BotTenant's Ready (1 or 0) by namespace and tenant, as the operator replica that acts reports it.

    A standby keeps the figures it set while it last acted: after leadership moved, they may be stale, or
    name a tenant deleted since. So only the youngest process among the replicas that report readiness
    counts: kopf lets the replica with the highest priority of the live ones act, so a replica that started
    after the acting one and acted would have outranked it, and would act still. Both selectors scope by
    namespace (`processes` must not filter on tenants: the acting replica is chosen over all of them).
    """
    reporting = f"zapflow_operator_tenant_ready{processes}"
    started = f"max by (namespace, pod) (process_start_time_seconds{processes} and on (namespace, pod) {reporting})"
    return (
        "max by (namespace, tenant) (\n"
        f"  zapflow_operator_tenant_ready{tenants}\n"
        f"  and on (namespace, pod) topk by (namespace) (\n    1, {started}\n  )\n"
        ")"
    )


REPLY_PATH_CONSUMERS = [catalogue.CONVERSATION_INBOUND.durable, catalogue.EGRESS.durable]
OTHER_CONSUMERS = [spec.durable for spec in catalogue.ALL_CONSUMERS if spec.durable not in REPLY_PATH_CONSUMERS]
CONSUMER_LAG_THRESHOLD = 1000

# A tenant's own conversation consumer, with `$1` for the tenant (a label_replace replacement).
DEDICATED_CONSUMER = catalogue.dedicated_conversation_consumer("$1").durable


def _not_serving_dedicated_consumers() -> str:
    """The dedicated conversation consumers of BotTenants that are not Ready, by consumer_name.

    Such a consumer fills up while its tenant's own replicas do not serve (starting, or handed back): the
    shared replicas answer the tenant meanwhile, and ZapflowBotTenantNotReady tickets it.
    """
    not_ready = textwrap.indent(tenant_readiness() + " == 0", "  ")
    return f'label_replace(\n{not_ready},\n  "consumer_name", "{DEDICATED_CONSUMER}", "tenant", "(.+)"\n)'


def _consumer_lag(durables: list[str]) -> str:
    """Undelivered messages of the consumers' leaders above the threshold and not shrinking."""
    selector = jetstream(
        "consumer_num_pending", 'is_consumer_leader="true"', f'consumer_name=~"{consumer_pattern(durables)}"'
    )
    lag = (
        f"max by (stream_name, consumer_name) ({selector}) > {CONSUMER_LAG_THRESHOLD}\n"
        f"and max by (stream_name, consumer_name) (deriv({selector}[15m])) >= 0"
    )
    if catalogue.CONVERSATION_INBOUND.durable in durables:
        lag += f"\nunless on (consumer_name) {_not_serving_dedicated_consumers()}"
    return lag


def _ratio(numerator: str, denominator: str, by: str, window: str) -> str:
    return f"sum by ({by}) (rate({numerator}[{window}]))\n/ sum by ({by}) (rate({denominator}[{window}]))"


TENANT = "namespace, tenant"
SIGNATURE_FAILURES = "zapflow_gateway_signature_failures_total"
CAMPAIGN_FAILED = 'zapflow_scheduler_campaign_messages_total{outcome="failed"}'
# Syncs that failed for the operator's own reach (the API, NATS), not for a tenant's spec or Secrets.
OPERATOR_SYNCS_FAILING = 'zapflow_operator_syncs_total{reason=~"KubernetesApiError|RegistryUnavailable"}'

ALERT_GROUPS: dict[str, list[Alert]] = {
    "zapflow-bus": [
        Alert(
            "ZapflowDeadLetters",
            new_or_increased("zapflow_bus_dead_letters_total", "15m", "namespace, tenant, consumer") + " > 0",
            "ticket",
            "Dead letters for {{ $labels.tenant }} from consumer {{ $labels.consumer }}",
            "Messages were moved to ZF_DLQ in the last 15 minutes: zapflow gave up on them after their last"
            " delivery (or could not read a webhook part). Nothing replays them.",
        ),
        Alert(
            "ZapflowConsumerLag",
            _consumer_lag(REPLY_PATH_CONSUMERS),
            "page",
            "Consumer {{ $labels.consumer_name }} of {{ $labels.stream_name }} is not keeping up",
            f"More than {CONSUMER_LAG_THRESHOLD} messages wait undelivered and the backlog is not shrinking:"
            " customers wait for their answers.",
            wait="10m",
        ),
        Alert(
            "ZapflowConsumerLag",
            _consumer_lag(OTHER_CONSUMERS),
            "ticket",
            "Consumer {{ $labels.consumer_name }} of {{ $labels.stream_name }} is not keeping up",
            f"More than {CONSUMER_LAG_THRESHOLD} messages wait undelivered and the backlog is not shrinking.",
            wait="15m",
        ),
    ],
    "zapflow-whatsapp": [
        Alert(
            "ZapflowGraphApiErrors",
            _ratio(
                'zapflow_gateway_outbound_total{result=~"failed|retried|template_rejected|uncertain"}',
                "zapflow_gateway_graph_api_duration_seconds_count",
                TENANT,
                "15m",
            )
            + " > 0.1",
            "ticket",
            "The Graph API refuses or fails over 10% of {{ $labels.tenant }}'s sends",
            "Sends failed, were retried (429, 5xx), had a rejected template or an uncertain outcome for more"
            " than a tenth of the Graph API calls in the last 15 minutes.",
            wait="10m",
        ),
        Alert(
            "ZapflowUncertainSends",
            new_or_increased('zapflow_gateway_outbound_total{result="uncertain"}', "30m", TENANT) + " > 0",
            "ticket",
            "Sends with an uncertain outcome for {{ $labels.tenant }}",
            "Egress died or timed out during a Graph API call: Meta may or may not have delivered the message,"
            " and zapflow never resends it (no duplicate replies).",
        ),
        Alert(
            "ZapflowSignatureFailures",
            new_or_increased(SIGNATURE_FAILURES, "10m", TENANT)
            + " >= 10\nand "
            + _ratio(SIGNATURE_FAILURES, "zapflow_gateway_webhook_requests_total", TENANT, "10m")
            + " > 0.1",
            "ticket",
            "Webhooks for {{ $labels.tenant }} fail their signature check",
            "More than a tenth of the tenant's webhook POSTs in 10 minutes had a missing or wrong"
            " X-Hub-Signature-256: a rotated app secret, or someone forging webhooks.",
            wait="5m",
        ),
        Alert(
            "ZapflowWindowViolations",
            new_or_increased("zapflow_gateway_window_violations_total", "30m", TENANT) + " > 0",
            "ticket",
            "Meta refused {{ $labels.tenant }}'s messages: the 24-hour window was closed (131047)",
            "zapflow thought the customer's window open, Meta did not: the messages were not delivered.",
        ),
        Alert(
            "ZapflowWebhookUnknownPayloads",
            new_or_increased("zapflow_gateway_webhook_unknown_total", "1h", "namespace, tenant, kind") + " > 0",
            "ticket",
            "Webhooks for {{ $labels.tenant }} carry {{ $labels.kind }}, which zapflow does not know",
            "Meta sends a message type or field zapflow does not read: the data is kept in each event's raw JSON.",
        ),
    ],
    "zapflow-conversation": [
        Alert(
            "ZapflowResponderErrors",
            _ratio("zapflow_conversation_responder_errors_total", "zapflow_conversation_turns_total", TENANT, "15m")
            + " > 0.05",
            "ticket",
            "Over 5% of {{ $labels.tenant }}'s turns get the fallback because the responder failed",
            "The tenant's responder (the language model, the knowledge base) times out, cannot be reached or"
            " answers nonsense: customers get the tenant's fallback answer instead.",
            wait="15m",
        ),
        Alert(
            "ZapflowEngineFailures",
            new_or_increased("zapflow_conversation_engine_failures_total", "15m", "namespace, kind") + " > 10",
            "ticket",
            "The conversation engine keeps surviving {{ $labels.kind }} failures",
            "A loop of the engine or an acknowledgement failed more than 10 times in 15 minutes; the engine"
            " retries, but turns are delayed.",
        ),
    ],
    "zapflow-scheduler": [
        Alert(
            "ZapflowTimersSkippedLate",
            new_or_increased("zapflow_scheduler_timers_skipped_late_total", "30m", "namespace, tenant, kind") + " > 0",
            "ticket",
            "{{ $labels.kind }} timers of {{ $labels.tenant }} fired too late and were skipped",
            "Timers came later than their kind allows (the scheduler was down or behind), so their nudges"
            " or campaign steps did not happen.",
        ),
        Alert(
            "ZapflowCampaignFailures",
            new_or_increased(CAMPAIGN_FAILED, "30m", TENANT)
            + " >= 10\nand "
            + _ratio(
                CAMPAIGN_FAILED,
                'zapflow_scheduler_campaign_messages_total{outcome=~"sent|failed"}',
                TENANT,
                "30m",
            )
            + " > 0.1",
            "ticket",
            "Over 10% of {{ $labels.tenant }}'s campaign messages fail",
            "Meta refused more than a tenth of the campaign messages sent in 30 minutes.",
        ),
        Alert(
            "ZapflowSchedulerJobFailing",
            new_or_increased("zapflow_scheduler_job_failures_total", "1h", "namespace, job_name") + " >= 3",
            "ticket",
            "The scheduler job {{ $labels.job_name }} keeps failing",
            "The job failed at least three times in an hour; it runs again at its next interval.",
        ),
    ],
    "zapflow-handoff": [
        Alert(
            "ZapflowHandoffQueueStale",
            "max by (namespace, tenant) (zapflow_handoff_oldest_wait_seconds) > 900",
            "ticket",
            "A customer of {{ $labels.tenant }} has waited over 15 minutes for a person",
            "The oldest conversation in the tenant's handoff queue has waited more than 15 minutes for an agent.",
            wait="5m",
        ),
    ],
    "zapflow-operator": [
        Alert(
            "ZapflowBotTenantNotReady",
            tenant_readiness() + " == 0",
            "ticket",
            "BotTenant {{ $labels.tenant }} has not been Ready for 15 minutes",
            "The operator reports the Ready condition of BotTenant {{ $labels.tenant }} False: the tenant is not"
            " written to the registry, or not as its spec asks. Run `kubectl describe bottenant {{ $labels.tenant }}`"
            " for the condition's reason and message.",
            wait="15m",
        ),
        Alert(
            "ZapflowOperatorSyncFailing",
            new_or_increased(OPERATOR_SYNCS_FAILING, "10m", "namespace, reason") + " > 0",
            "ticket",
            "The operator's BotTenant syncs keep failing with {{ $labels.reason }}",
            "For 15 minutes, syncs have ended in {{ $labels.reason }}: the operator cannot reach the Kubernetes API"
            " or the registry (NATS), so no BotTenant change, new tenant or dedicated workload takes effect."
            " The tenants already in the registry are still answered.",
            wait="15m",
        ),
    ],
    "zapflow-platform": [
        Alert(
            "ZapflowPodRestarts",
            # Pods that served zapflow's metrics in the last hour: the chart's, whatever their names.
            "increase(kube_pod_container_status_restarts_total[1h]) > 3\n"
            "and on (namespace, pod) max_over_time(zapflow_tenants_loaded[1h])",
            "ticket",
            "Pod {{ $labels.pod }} restarted more than 3 times in an hour",
            "A zapflow process keeps exiting or failing its liveness probe.",
        ),
        Alert(
            "ZapflowRedisDown",
            "redis_up == 0",
            "page",
            "Redis {{ $labels.instance }} is down",
            "The redis_exporter cannot reach Redis: debounce, turn locks, idempotency keys and send pacing"
            " stop, so no turn is answered.",
            wait="2m",
        ),
    ],
}


def recording_rules() -> list[dict[str, str]]:
    return [
        {"record": slo.record(window), "expr": slo.errors.replace("{window}", window)}
        for slo in SLOS
        for window in SLO_WINDOWS
    ]


def burn_alerts() -> list[Alert]:
    return [
        Alert(
            slo.alert,
            f"{slo.record(burn.long)} > ({burn.factor} * {slo.budget})\n"
            f"and {slo.record(burn.short)} > ({burn.factor} * {slo.budget})",
            burn.severity,
            f"{slo.summary} ({burn.long} and {burn.short} windows burning at {burn.factor}x)",
            f"{slo.description} SLO: {slo.what}.",
            wait=burn.wait,
            labels={"slo": slo.name, "long_window": burn.long, "short_window": burn.short},
        )
        for slo in SLOS
        for burn in BURN_WINDOWS
    ]


def all_alerts() -> list[Alert]:
    return burn_alerts() + [alert for alerts in ALERT_GROUPS.values() for alert in alerts]


def _rule(alert: Alert) -> dict[str, Any]:
    return {
        "alert": alert.name,
        "expr": alert.expr,
        "for": alert.wait,
        "labels": {"severity": alert.severity, **alert.labels},
        "annotations": {
            "summary": alert.summary,
            "description": alert.description,
            "runbook_url": f"{RUNBOOK_BASE_URL}/{alert.runbook}",
        },
    }


def rule_groups() -> dict[str, Any]:
    """The rule file: SLO recording rules, SLO alerts, then the alerts of each part of the platform."""
    groups: list[dict[str, Any]] = [
        {"name": "zapflow-slo-recording", "rules": recording_rules()},
        {"name": "zapflow-slo", "rules": [_rule(alert) for alert in burn_alerts()]},
    ]
    groups += [{"name": name, "rules": [_rule(alert) for alert in alerts]} for name, alerts in ALERT_GROUPS.items()]
    return {"groups": groups}


class _Dumper(yaml.SafeDumper):
    """Multi-line expressions as literal blocks, so the rule file reads like PromQL."""


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


_Dumper.add_representer(str, _str)


def render_rules() -> str:
    header = (
        "# Generated by `uv run python -m zapflow.monitoring --write` from services/zapflow/monitoring/alerts.py.\n"
    )
    return header + yaml.dump(rule_groups(), Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)
