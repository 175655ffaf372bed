"""zapflow's Grafana dashboards, built with the Grafana Foundation SDK.

Each dashboard is a function returning its builder; `DASHBOARDS` names them, and the name is the file
under charts/zapflow/files/dashboards/ and the picture under docs/dashboards/. Every dashboard picks its
Prometheus data source from a variable, and the zapflow ones filter on a namespace (several releases may
share a Prometheus) and on tenants.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from typing import Any

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.builders.common import ReduceDataOptions, StackingConfig, VizLegendOptions
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import BigValueGraphMode, LegendDisplayMode, LegendPlacement, StackingMode
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    Panel,
    RowPanel,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

from zapflow.monitoring.alerts import (
    REPLY_PATH_CONSUMERS,
    TURN_LATENCY,
    TURN_LATENCY_THRESHOLD_S,
    WEBHOOK_AVAILABILITY,
    consumer_pattern,
    jetstream,
    new_or_increased,
    tenant_readiness,
)
from zapflow.platform import catalogue

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
NAMESPACE = 'namespace=~"$namespace"'
TENANTS = 'tenant=~"$tenant"'
TAGS = ["zapflow"]
WEBHOOK_REQUESTS = "zapflow_gateway_webhook_requests_total"
UNAVAILABLE = 'outcome="unavailable"'
LEADER = 'is_consumer_leader="true"'
EGRESS_CONSUMER = f'consumer_name=~"{consumer_pattern([REPLY_PATH_CONSUMERS[1]])}"'
# The shared conversation consumer and the tenants' own (`conversation-<tenant>`).
CONVERSATION_CONSUMERS = f'consumer=~"{consumer_pattern([REPLY_PATH_CONSUMERS[0]])}"'
ZAPFLOW_STREAMS = f'stream_name=~"{"|".join(stream.name for stream in catalogue.ALL_STREAMS)}"'
PICKED_STREAMS = 'stream_name=~"$stream"'


def _selector(*matchers: str) -> str:
    return "{" + ", ".join(matchers) + "}"


def zf(*matchers: str) -> str:
    """The label matchers of a zapflow metric on these dashboards: the namespace and tenants picked, and more."""
    return _selector(NAMESPACE, TENANTS, *matchers)


def zf_all(*matchers: str) -> str:
    """The namespace picked, every tenant (metrics without a tenant label)."""
    return _selector(NAMESPACE, *matchers)


def rate(metric: str, selector: str, by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{selector}[{RATE}]))"


def quantile(q: float, histogram: str, selector: str, by: str = "") -> str:
    grouping = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({grouping}) (rate({histogram}_bucket{selector}[{RATE}])))"


def target(expr: str, legend: str = "") -> prometheus.Dataquery:
    query = prometheus.Dataquery().expr(expr)
    return query.legend_format(legend) if legend else query


def graph(
    title: str,
    description: str,
    unit: str,
    *targets: prometheus.Dataquery,
    width: int = 8,
    height: int = 8,
    stacked: bool = False,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(height)
        .fill_opacity(10)
        .legend(
            VizLegendOptions().display_mode(LegendDisplayMode.LIST).placement(LegendPlacement.BOTTOM).show_legend(True)
        )
        .targets(list(targets))
    )
    return panel.stacking(StackingConfig().mode(StackingMode.NORMAL)) if stacked else panel


def single(
    title: str, description: str, unit: str, query: prometheus.Dataquery, width: int = 4, height: int = 4
) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(height)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
        .graph_mode(BigValueGraphMode.NONE)
        .with_target(query.instant())
    )


def red_from(value: float) -> dashboard.ThresholdsConfig:
    """Green below the value, red from it."""
    steps = [Threshold(value=None, color="green"), Threshold(value=value, color="red")]
    return dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps)


def datasource_variable() -> dashboard.DatasourceVariable:
    return dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")


def query_variable(name: str, label: str, query: str, multi: bool = True) -> dashboard.QueryVariable:
    variable = (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
    )
    if multi:
        # ".*" rather than a list of values: it also matches series without the label (outside Kubernetes).
        variable = variable.multi(True).include_all(True).all_value(".*").current(_ALL)
    return variable


_ALL = VariableOption(selected=True, text="All", value="$__all")


def namespace_variable() -> dashboard.QueryVariable:
    return query_variable("namespace", "Namespace", "label_values(zapflow_tenants_loaded, namespace)")


def tenant_variable(multi: bool = True) -> dashboard.QueryVariable:
    query = f"label_values(zapflow_gateway_webhook_requests_total{_selector(NAMESPACE)}, tenant)"
    return query_variable("tenant", "Tenant", query, multi=multi)


def board(uid: str, title: str, description: str, *variables: Any) -> dashboard.Dashboard:
    built = (
        dashboard.Dashboard(f"zapflow / {title}")
        .uid(f"zapflow-{uid}")
        .description(description)
        .tags(TAGS)
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .with_variable(datasource_variable())
    )
    for variable in variables:
        built = built.with_variable(variable)
    return built


def platform_overview() -> dashboard.Dashboard:
    """Rate, errors and duration of every service, and the SLOs."""
    consumer = zf('consumer=~"$consumer"')
    return (
        board(
            "overview",
            "Platform overview",
            "Rate, errors and duration of each zapflow service, and the SLOs.",
            namespace_variable(),
            tenant_variable(),
            query_variable(
                "consumer",
                "Consumer",
                f"label_values(zapflow_bus_handler_duration_seconds_count{_selector(NAMESPACE)}, consumer)",
            ),
        )
        .with_row(dashboard.Row("SLOs"))
        .with_panel(
            single(
                "Turns answered in time (1h)",
                TURN_LATENCY.what,
                "percentunit",
                target(f"1 - max({TURN_LATENCY.record('1h')}{_selector(NAMESPACE)})"),
                width=6,
            )
        )
        .with_panel(
            single(
                "Turns answered in time (3d)",
                TURN_LATENCY.what,
                "percentunit",
                target(f"1 - max({TURN_LATENCY.record('3d')}{_selector(NAMESPACE)})"),
                width=6,
            )
        )
        .with_panel(
            single(
                "Webhook availability (1h)",
                WEBHOOK_AVAILABILITY.what,
                "percentunit",
                target(f"1 - max({WEBHOOK_AVAILABILITY.record('1h')}{_selector(NAMESPACE)})"),
                width=6,
            )
        )
        .with_panel(
            single(
                "Webhook availability (3d)",
                WEBHOOK_AVAILABILITY.what,
                "percentunit",
                target(f"1 - max({WEBHOOK_AVAILABILITY.record('3d')}{_selector(NAMESPACE)})"),
                width=6,
            )
        )
        .with_row(dashboard.Row("Gateway: webhooks"))
        .with_panel(
            graph(
                "Webhook requests",
                "Webhook POSTs by outcome.",
                "reqps",
                target(rate("zapflow_gateway_webhook_requests_total", zf(), "outcome"), "{{outcome}}"),
                stacked=True,
            )
        )
        .with_panel(
            graph(
                "Webhook errors",
                "Share of webhook POSTs answered 503 (the bus could not store them), and of refused signatures.",
                "percentunit",
                target(f"{rate(WEBHOOK_REQUESTS, zf(UNAVAILABLE))} / {rate(WEBHOOK_REQUESTS, zf())}", "503"),
                target(
                    f"{rate('zapflow_gateway_signature_failures_total', zf())} / {rate(WEBHOOK_REQUESTS, zf())}",
                    "bad signature",
                ),
            )
        )
        .with_panel(
            graph(
                "Webhook duration",
                "Time to answer a webhook POST, JetStream publishes included.",
                "s",
                target(quantile(0.5, "zapflow_gateway_webhook_duration_seconds", zf()), "p50"),
                target(quantile(0.99, "zapflow_gateway_webhook_duration_seconds", zf()), "p99"),
            )
        )
        .with_row(dashboard.Row("Conversation: turns"))
        .with_panel(
            graph(
                "Turns",
                "Turns answered, by outcome.",
                "ops",
                target(rate("zapflow_conversation_turns_total", zf(), "outcome"), "{{outcome}}"),
                stacked=True,
            )
        )
        .with_panel(
            graph(
                "Responder errors",
                "Responder failures answered with the tenant's fallback, by kind.",
                "ops",
                target(rate("zapflow_conversation_responder_errors_total", zf(), "kind"), "{{kind}}"),
            )
        )
        .with_panel(
            graph(
                "Turn latency",
                "From the debounce closing a turn to its answer being published.",
                "s",
                target(quantile(0.5, "zapflow_conversation_turn_latency_seconds", zf()), "p50"),
                target(quantile(0.99, "zapflow_conversation_turn_latency_seconds", zf()), "p99"),
            )
        )
        .with_row(dashboard.Row("Gateway: egress"))
        .with_panel(
            graph(
                "Sends",
                "Outbound commands by result.",
                "ops",
                target(rate("zapflow_gateway_outbound_total", zf(), "result"), "{{result}}"),
                stacked=True,
            )
        )
        .with_panel(
            graph(
                "Send errors",
                "Graph API calls that failed, were retried, or whose outcome is uncertain.",
                "ops",
                target(
                    rate(
                        "zapflow_gateway_outbound_total",
                        zf('result=~"failed|retried|uncertain|template_rejected"'),
                        "result",
                    ),
                    "{{result}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Graph API duration",
                "Duration of WhatsApp Cloud API calls.",
                "s",
                target(quantile(0.5, "zapflow_gateway_graph_api_duration_seconds", zf()), "p50"),
                target(quantile(0.99, "zapflow_gateway_graph_api_duration_seconds", zf()), "p99"),
            )
        )
        .with_row(dashboard.Row("Every service: bus consumers"))
        .with_panel(
            graph(
                "Messages handled",
                "Messages each consumer handled (the recorder, embedding, handoff, scheduler and the rest).",
                "ops",
                target(rate("zapflow_bus_handler_duration_seconds_count", consumer, "consumer"), "{{consumer}}"),
            )
        )
        .with_panel(
            graph(
                "Dead letters",
                "Messages moved to ZF_DLQ, by consumer (webhook: parts of webhooks zapflow could not read).",
                "ops",
                target(rate("zapflow_bus_dead_letters_total", zf(), "consumer"), "{{consumer}}"),
            )
        )
        .with_panel(
            graph(
                "Handler duration p99",
                "Time a consumer took to handle one message.",
                "s",
                target(quantile(0.99, "zapflow_bus_handler_duration_seconds", consumer, "consumer"), "{{consumer}}"),
            )
        )
        .with_row(dashboard.Row("Embedding and recorder"))
        .with_panel(
            graph(
                "Knowledge requests",
                "Knowledge requests over NATS served by the embedding service, by operation and outcome.",
                "ops",
                target(
                    rate("zapflow_knowledge_requests_total", zf(), "operation, outcome"), "{{operation}} {{outcome}}"
                ),
            )
        )
        .with_panel(
            graph(
                "Knowledge search p99",
                "Searches served, question embedding included, by collection.",
                "s",
                target(
                    quantile(0.99, "zapflow_knowledge_search_seconds", zf(), "collection"),
                    "{{collection}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Recorder batches",
                "Batches the recorder wrote (each in one transaction), and events per batch.",
                "short",
                target(rate("zapflow_recorder_batch_events_count", zf_all()), "batches per second"),
                target(quantile(0.99, "zapflow_recorder_batch_events", zf_all()), "events per batch p99"),
            )
        )
        .with_row(dashboard.Row("Operator"))
        .with_panel(
            single(
                "BotTenants not ready",
                "BotTenants whose Ready condition is False (kubectl describe bottenant <name> says why), as the"
                " operator replica that acts reports them.",
                "short",
                target(f"count({tenant_readiness(zf_all(), zf())} == 0) or vector(0)"),
                height=8,
            ).thresholds(red_from(1))
        )
        .with_panel(
            graph(
                "BotTenant syncs",
                "Syncs of BotTenants (create, update, resume, retries), by the reason of the Ready condition they"
                " ended with: Synced, or what is wrong (docs/operator.md).",
                "ops",
                target(rate("zapflow_operator_syncs_total", zf_all(), "reason"), "{{reason}}"),
                width=10,
            )
        )
        .with_panel(
            graph(
                "Registry drift repaired",
                "Registry entries edited or removed by hand that the operator's resync rewrote from their BotTenant.",
                "ops",
                target(rate("zapflow_operator_drift_repairs_total", zf(), "tenant"), "{{tenant}}"),
                width=10,
            )
        )
        .with_row(dashboard.Row("Processes"))
        .with_panel(
            graph(
                "Processes scraped",
                "zapflow processes whose /metrics Prometheus reads, by Kubernetes service.",
                "short",
                target(f"count by (service) (zapflow_tenants_loaded{_selector(NAMESPACE)})", "{{service}}"),
            )
        )
        .with_panel(
            graph(
                "CPU",
                "CPU of zapflow's pods (cAdvisor).",
                "cores",
                target(
                    f'sum by (pod) (rate(container_cpu_usage_seconds_total{{{NAMESPACE}, container!=""}}[{RATE}])'
                    f" and on (namespace, pod) zapflow_tenants_loaded)",
                    "{{pod}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Restarts",
                "Container restarts of zapflow's pods in the last hour (kube-state-metrics).",
                "short",
                target(
                    f"sum by (pod) (increase(kube_pod_container_status_restarts_total{_selector(NAMESPACE)}[1h])"
                    " and on (namespace, pod) zapflow_tenants_loaded)",
                    "{{pod}}",
                ),
            )
        )
    )


def tenant_view() -> dashboard.Dashboard:
    """Everything about one tenant."""
    one = zf()
    return (
        board(
            "tenant",
            "Tenant",
            "One tenant: its webhooks, turns, sends, handoffs, campaigns and knowledge base.",
            namespace_variable(),
            tenant_variable(multi=False),
        )
        .with_row(dashboard.Row("Now"))
        .with_panel(
            single(
                "BotTenant Ready",
                "The Ready condition of the tenant's BotTenant, as the operator replica that acts reports it (kubectl"
                " describe bottenant <name> says why it is not). No value: a tenant applied with zapflow tenant apply.",
                "short",
                target(tenant_readiness(zf_all(), one)),
                width=6,
            )
            .mappings(
                [
                    ValueMap(
                        {
                            "1": ValueMappingResult(text="Ready", color="green"),
                            "0": ValueMappingResult(text="Not ready", color="red"),
                        }
                    )
                ]
            )
            .no_value("not a BotTenant")
        )
        .with_panel(
            single(
                "Open conversations",
                "Conversations open now.",
                "short",
                target(f"sum(zapflow_conversations_open{one})"),
                width=6,
            )
        )
        .with_panel(
            single(
                "Contacts in the 24-hour window",
                "Contacts who wrote in the last 24 hours.",
                "short",
                target(f"sum(zapflow_contacts_in_window{one})"),
                width=6,
            )
        )
        .with_panel(
            single(
                "Waiting for a person",
                "Conversations in the handoff queue.",
                "short",
                target(f"sum(zapflow_handoff_queue_length{one})"),
                width=6,
            )
        )
        .with_panel(
            single(
                "Oldest wait",
                "How long the oldest conversation in the handoff queue has waited.",
                "s",
                target(f"max(zapflow_handoff_oldest_wait_seconds{one})"),
                width=6,
            )
        )
        .with_panel(
            single(
                "Agents online",
                "Agents with an inbox open.",
                "short",
                target(f"sum(zapflow_handoff_agents_online{one})"),
                width=6,
            )
        )
        .with_panel(
            single(
                "Active campaigns",
                "Campaigns scheduled, running or waiting.",
                "short",
                target(f"sum(zapflow_campaigns_active{one})"),
                width=6,
            )
        )
        .with_panel(
            single(
                "Registry drift repaired (24h)",
                "Times the operator rewrote the tenant's registry entry from its BotTenant after a hand edit or"
                " removal.",
                "short",
                target(
                    new_or_increased(f"zapflow_operator_drift_repairs_total{one}", "24h", "tenant") + " or vector(0)"
                ),
                width=6,
            )
        )
        .with_row(dashboard.Row("Inbound"))
        .with_panel(
            graph(
                "Webhook requests",
                "Webhook POSTs by outcome.",
                "reqps",
                target(rate("zapflow_gateway_webhook_requests_total", one, "outcome"), "{{outcome}}"),
                stacked=True,
                width=6,
            )
        )
        .with_panel(
            graph(
                "Customer messages",
                "Messages published to the bus, by WhatsApp type.",
                "ops",
                target(rate("zapflow_gateway_inbound_messages_total", one, "type"), "{{type}}"),
                stacked=True,
                width=6,
            )
        )
        .with_panel(
            graph(
                "Delivery statuses",
                "Statuses Meta reported for the tenant's messages.",
                "ops",
                target(rate("zapflow_gateway_status_updates_total", one, "status"), "{{status}}"),
                width=6,
            )
        )
        .with_panel(
            graph(
                "Unknown payload parts",
                "Message types and fields zapflow does not know (kept in the events' raw JSON): Meta changed its"
                " payloads.",
                "ops",
                target(rate("zapflow_gateway_webhook_unknown_total", one, "kind"), "{{kind}}"),
                width=6,
            )
        )
        .with_row(dashboard.Row("Turns"))
        .with_panel(
            graph(
                "Turns",
                "Turns answered, by outcome.",
                "ops",
                target(rate("zapflow_conversation_turns_total", one, "outcome"), "{{outcome}}"),
                stacked=True,
            )
        )
        .with_panel(
            graph(
                "Turn latency",
                "From the debounce closing a turn to its answer being published.",
                "s",
                target(quantile(0.5, "zapflow_conversation_turn_latency_seconds", one), "p50"),
                target(quantile(0.95, "zapflow_conversation_turn_latency_seconds", one), "p95"),
                target(quantile(0.99, "zapflow_conversation_turn_latency_seconds", one), "p99"),
            )
        )
        .with_panel(
            graph(
                "Knowledge",
                "What the faq responder made of the tenant's questions.",
                "ops",
                target(rate("zapflow_conversation_faq_answers_total", one, "outcome"), "{{outcome}}"),
            )
        )
        .with_row(dashboard.Row("Outbound"))
        .with_panel(
            graph(
                "Sends",
                "Outbound commands by result.",
                "ops",
                target(rate("zapflow_gateway_outbound_total", one, "result"), "{{result}}"),
                stacked=True,
            )
        )
        .with_panel(
            graph(
                "24-hour window",
                "Messages Meta refused because the window was closed (131047), and those zapflow held back itself.",
                "ops",
                target(rate("zapflow_gateway_window_violations_total", one), "refused by Meta (131047)"),
                target(rate("zapflow_gateway_outside_window_total", one, "sender"), "held back: {{sender}}"),
            )
        )
        .with_panel(
            graph(
                "Campaign recipients",
                "Recipients of active campaigns by state.",
                "short",
                target(f"sum by (state) (zapflow_campaign_recipients{one})", "{{state}}"),
                stacked=True,
            )
        )
        .with_row(dashboard.Row("Knowledge base"))
        .with_panel(
            graph(
                "Index entries",
                "Entries in the embedding replicas' index, by collection (knowledge chunks, turns).",
                "short",
                target(f"max by (collection) (zapflow_knowledge_entries{one})", "{{collection}}"),
                width=12,
            )
        )
        .with_panel(
            graph(
                "Texts embedded",
                "Texts run through the embedding model, by collection.",
                "ops",
                target(rate("zapflow_knowledge_embedded_total", one, "collection"), "{{collection}}"),
                width=12,
            )
        )
        .with_row(dashboard.Row("People and failures"))
        .with_panel(
            graph(
                "Handoffs",
                "Conversations handed to a person, by reason.",
                "ops",
                target(rate("zapflow_handoffs_total", one, "reason"), "{{reason}}"),
            )
        )
        .with_panel(
            graph(
                "Dead letters",
                "Messages moved to ZF_DLQ, by consumer.",
                "ops",
                target(rate("zapflow_bus_dead_letters_total", one, "consumer"), "{{consumer}}"),
            )
        )
        .with_panel(
            graph(
                "Responder errors",
                "Responder failures answered with the tenant's fallback, by kind.",
                "ops",
                target(rate("zapflow_conversation_responder_errors_total", one, "kind"), "{{kind}}"),
            )
        )
    )


def conversation_engine() -> dashboard.Dashboard:
    """Turns, the debounce, where a turn's time goes, held messages."""
    return (
        board(
            "conversation",
            "Conversation engine",
            "Turns, the debounce, where a turn's time goes, and the messages held until their turn is answered.",
            namespace_variable(),
            tenant_variable(),
        )
        .with_row(dashboard.Row("Turns"))
        .with_panel(
            graph(
                "Turns",
                "Turns answered, by outcome.",
                "ops",
                target(rate("zapflow_conversation_turns_total", zf(), "outcome"), "{{outcome}}"),
                stacked=True,
            )
        )
        .with_panel(
            graph(
                "Turn latency",
                f"From the debounce closing a turn to its answer being published (SLO: {TURN_LATENCY.what}).",
                "s",
                target(quantile(0.5, "zapflow_conversation_turn_latency_seconds", zf()), "p50"),
                target(quantile(0.99, "zapflow_conversation_turn_latency_seconds", zf()), "p99"),
                target(f"vector({TURN_LATENCY_THRESHOLD_S})", "SLO threshold"),
            )
        )
        .with_panel(
            graph(
                "Turns in flight",
                "Turns being answered right now, by pod.",
                "short",
                target(f"sum by (pod) (zapflow_conversation_turns_in_flight{zf()})", "{{pod}}"),
            )
        )
        .with_row(dashboard.Row("Debounce"))
        .with_panel(
            graph(
                "Messages per turn",
                "Customer messages the debounce merged into one turn: the mean and the p99.",
                "short",
                target(
                    f"{rate('zapflow_conversation_turn_messages_sum', zf())}"
                    f" / {rate('zapflow_conversation_turn_messages_count', zf())}",
                    "mean",
                ),
                target(quantile(0.99, "zapflow_conversation_turn_messages", zf()), "p99"),
            )
        )
        .with_panel(
            graph(
                "Merged messages",
                "Customer messages that joined an earlier one's turn instead of starting their own.",
                "ops",
                target(
                    f"{rate('zapflow_conversation_turn_messages_sum', zf())}"
                    f" - {rate('zapflow_conversation_turn_messages_count', zf())}",
                    "merged",
                ),
            )
        )
        .with_panel(
            graph(
                "Held messages",
                "Inbound messages held unacknowledged until their turn is answered, by pod.",
                "short",
                target(f"sum by (pod) (zapflow_conversation_held_messages{zf_all()})", "{{pod}}"),
            )
        )
        .with_row(dashboard.Row("Latency stages"))
        .with_panel(
            graph(
                "Stages p99",
                "A message's way: the webhook (publishes included), the conversation consumers' handler (the shared"
                " one and the tenants' own), the responder (and the knowledge search it waits for), publishing to"
                " JetStream, the Graph API call.",
                "s",
                target(quantile(0.99, "zapflow_gateway_webhook_duration_seconds", zf()), "webhook"),
                target(
                    quantile(
                        0.99,
                        "zapflow_bus_handler_duration_seconds",
                        zf(CONVERSATION_CONSUMERS),
                    ),
                    "conversation handler",
                ),
                target(quantile(0.99, "zapflow_conversation_responder_duration_seconds", zf()), "responder"),
                target(quantile(0.99, "zapflow_knowledge_search_seconds", zf()), "knowledge search"),
                target(quantile(0.99, "zapflow_bus_publish_duration_seconds", zf()), "publish"),
                target(quantile(0.99, "zapflow_gateway_graph_api_duration_seconds", zf()), "Graph API"),
                width=12,
            )
        )
        .with_panel(
            graph(
                "Responder duration p99",
                "Time each responder took to answer a turn.",
                "s",
                target(
                    quantile(0.99, "zapflow_conversation_responder_duration_seconds", zf(), "responder"),
                    "{{responder}}",
                ),
                width=12,
            )
        )
        .with_row(dashboard.Row("Order and failures"))
        .with_panel(
            graph(
                "Lock waits",
                "Due turns that waited for the contact's previous turn.",
                "ops",
                target(rate("zapflow_conversation_lock_waits_total", zf()), "waits"),
            )
        )
        .with_panel(
            graph(
                "Duplicates dropped",
                "Messages dropped as duplicates, by layer.",
                "ops",
                target(rate("zapflow_bus_duplicates_dropped_total", zf(), "layer"), "{{layer}}"),
            )
        )
        .with_panel(
            graph(
                "Engine failures",
                "Failures the engine survived, by kind; and responder errors answered with the fallback.",
                "ops",
                target(rate("zapflow_conversation_engine_failures_total", zf_all(), "kind"), "engine: {{kind}}"),
                target(rate("zapflow_conversation_responder_errors_total", zf(), "kind"), "responder: {{kind}}"),
            )
        )
    )


def whatsapp_egress() -> dashboard.Dashboard:
    """Sends, the throughput and pacing waits, and the 24-hour window."""
    return (
        board(
            "egress",
            "WhatsApp egress",
            "Sends to the WhatsApp Cloud API: results, waits for the number's throughput and the customer's pacing,"
            " and the 24-hour window.",
            namespace_variable(),
            tenant_variable(),
        )
        .with_row(dashboard.Row("Sends"))
        .with_panel(
            graph(
                "Sends by result",
                "Outbound commands by result.",
                "ops",
                target(rate("zapflow_gateway_outbound_total", zf(), "result"), "{{result}}"),
                stacked=True,
                width=12,
            )
        )
        .with_panel(
            graph(
                "Graph API duration",
                "Duration of WhatsApp Cloud API calls.",
                "s",
                target(quantile(0.5, "zapflow_gateway_graph_api_duration_seconds", zf()), "p50"),
                target(quantile(0.99, "zapflow_gateway_graph_api_duration_seconds", zf()), "p99"),
                width=12,
            )
        )
        .with_row(dashboard.Row("Waits"))
        .with_panel(
            graph(
                "Rate-limit wait",
                "Time a command waited for the number's throughput limit.",
                "s",
                target(quantile(0.5, "zapflow_gateway_rate_limit_wait_seconds", zf()), "p50"),
                target(quantile(0.99, "zapflow_gateway_rate_limit_wait_seconds", zf()), "p99"),
            )
        )
        .with_panel(
            graph(
                "Pacing wait",
                "Time a command waited so as not to message one customer too fast.",
                "s",
                target(quantile(0.5, "zapflow_gateway_pacing_wait_seconds", zf()), "p50"),
                target(quantile(0.99, "zapflow_gateway_pacing_wait_seconds", zf()), "p99"),
            )
        )
        .with_panel(
            graph(
                "Egress backlog",
                "Commands waiting for egress (NATS exporter, the consumer's leader).",
                "short",
                target(f"sum({jetstream('consumer_num_pending', LEADER, EGRESS_CONSUMER)})", "pending"),
                target(f"sum({jetstream('consumer_num_ack_pending', LEADER, EGRESS_CONSUMER)})", "ack pending"),
            )
        )
        .with_row(dashboard.Row("The 24-hour window"))
        .with_panel(
            graph(
                "Window violations (131047)",
                "Messages Meta refused because the customer's window was closed: zapflow thought it open.",
                "ops",
                target(rate("zapflow_gateway_window_violations_total", zf(), "tenant"), "{{tenant}}"),
            )
        )
        .with_panel(
            graph(
                "Held back outside the window",
                "Free-form messages zapflow did not send because the window was closed, by sender.",
                "ops",
                target(rate("zapflow_gateway_outside_window_total", zf(), "sender"), "{{sender}}"),
            )
        )
        .with_panel(
            graph(
                "Uncertain sends",
                "Sends whose outcome is unknown (egress died during the call): never resent.",
                "ops",
                target(rate("zapflow_gateway_outbound_total", zf('result="uncertain"'), "tenant"), "{{tenant}}"),
            )
        )
    )


def scheduler_campaigns() -> dashboard.Dashboard:
    """Timers, campaigns, re-engagement and the scheduler's jobs."""
    return (
        board(
            "scheduler",
            "Scheduler and campaigns",
            "Durable timers, campaigns, re-engagement nudges and the scheduler's jobs.",
            namespace_variable(),
            tenant_variable(),
        )
        .with_row(dashboard.Row("Timers"))
        .with_panel(
            graph(
                "Timer lateness p99",
                "How long after its due time a fired timer reached its handler, by kind.",
                "s",
                target(quantile(0.99, "zapflow_scheduler_timer_lateness_seconds", zf_all(), "kind"), "{{kind}}"),
            )
        )
        .with_panel(
            graph(
                "Timers",
                "Timers scheduled, fired, cancelled.",
                "ops",
                target(rate("zapflow_scheduler_timers_scheduled_total", zf()), "scheduled"),
                target(rate("zapflow_scheduler_timers_fired_total", zf()), "fired"),
                target(rate("zapflow_scheduler_timers_cancelled_total", zf()), "cancelled"),
            )
        )
        .with_panel(
            graph(
                "Timers skipped late",
                "Fired timers not handled because they came later than their kind allows.",
                "ops",
                target(rate("zapflow_scheduler_timers_skipped_late_total", zf(), "kind"), "{{kind}}"),
            )
        )
        .with_row(dashboard.Row("Campaigns"))
        .with_panel(
            graph(
                "Campaign recipients by state",
                "Recipients of the active campaigns by state.",
                "short",
                target(f"sum by (state) (zapflow_campaign_recipients{zf()})", "{{state}}"),
                stacked=True,
            )
        )
        .with_panel(
            graph(
                "Campaign messages",
                "Campaign messages by outcome.",
                "ops",
                target(rate("zapflow_scheduler_campaign_messages_total", zf(), "outcome"), "{{outcome}}"),
            )
        )
        .with_panel(
            graph(
                "Active campaigns",
                "Campaigns scheduled, running or waiting, by tenant.",
                "short",
                target(f"sum by (tenant) (zapflow_campaigns_active{zf()})", "{{tenant}}"),
            )
        )
        .with_row(dashboard.Row("Re-engagement and sessions"))
        .with_panel(
            graph(
                "Re-engagements",
                "Nudges that came due, by outcome.",
                "ops",
                target(rate("zapflow_scheduler_reengagements_total", zf(), "outcome"), "{{outcome}}"),
            )
        )
        .with_panel(
            graph(
                "Sessions",
                "Idle conversations closed and archived to analytics.",
                "ops",
                target(rate("zapflow_scheduler_sessions_closed_total", zf_all()), "closed"),
                target(rate("zapflow_scheduler_sessions_archived_total", zf_all()), "archived"),
            )
        )
        .with_panel(
            graph(
                "Open conversations",
                "Conversations open now, and contacts inside the 24-hour window.",
                "short",
                target(f"sum(zapflow_conversations_open{zf()})", "open conversations"),
                target(f"sum(zapflow_contacts_in_window{zf()})", "contacts in window"),
            )
        )
        .with_row(dashboard.Row("Jobs"))
        .with_panel(
            graph(
                "Job duration p99",
                "One run of each scheduler job.",
                "s",
                target(
                    quantile(0.99, "zapflow_scheduler_job_seconds", zf_all(), "job_name"),
                    "{{job_name}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Job failures",
                "Scheduler job runs that failed.",
                "ops",
                target(rate("zapflow_scheduler_job_failures_total", zf_all(), "job_name"), "{{job_name}}"),
            )
        )
        .with_panel(
            graph(
                "Since the last success",
                "Time since each job last completed.",
                "s",
                target(
                    f"time() - max by (job_name) (zapflow_scheduler_job_last_success_timestamp_seconds{zf_all()})",
                    "{{job_name}}",
                ),
            )
        )
        .with_row(dashboard.Row("Data lifecycle"))
        .with_panel(
            graph(
                "Retention",
                "Rows deleted because they outlived their tenant's retention, by store.",
                "ops",
                target(rate("zapflow_scheduler_retention_deleted_rows_total", zf_all(), "store"), "{{store}}"),
                width=12,
            )
        )
        .with_panel(
            graph(
                "Erasures",
                "Contacts erased at a tenant's request.",
                "ops",
                target(rate("zapflow_privacy_erasures_total", zf(), "tenant"), "{{tenant}}"),
                width=12,
            )
        )
    )


def handoff() -> dashboard.Dashboard:
    """Conversations with a person: the queue, waits, agents."""
    return (
        board(
            "handoff",
            "Handoff",
            "Conversations handed to a person: the queue, how long customers wait, what agents send.",
            namespace_variable(),
            tenant_variable(),
        )
        .with_row(dashboard.Row("Queue"))
        .with_panel(
            graph(
                "Queue length",
                "Conversations waiting for an agent, by tenant.",
                "short",
                target(f"sum by (tenant) (zapflow_handoff_queue_length{zf()})", "{{tenant}}"),
            )
        )
        .with_panel(
            graph(
                "Oldest wait",
                "How long the oldest conversation in each tenant's queue has waited.",
                "s",
                target(f"max by (tenant) (zapflow_handoff_oldest_wait_seconds{zf()})", "{{tenant}}"),
            )
        )
        .with_panel(
            graph(
                "Agents online",
                "Agents with an inbox open, by tenant.",
                "short",
                target(f"sum by (tenant) (zapflow_handoff_agents_online{zf()})", "{{tenant}}"),
            )
        )
        .with_row(dashboard.Row("Handoffs"))
        .with_panel(
            graph(
                "Handoffs",
                "Conversations handed to a person, by reason.",
                "ops",
                target(rate("zapflow_handoffs_total", zf(), "reason"), "{{reason}}"),
                stacked=True,
            )
        )
        .with_panel(
            graph(
                "First reply",
                "From the handoff to the first agent reply.",
                "s",
                target(quantile(0.5, "zapflow_handoff_first_reply_seconds", zf()), "p50"),
                target(quantile(0.9, "zapflow_handoff_first_reply_seconds", zf()), "p90"),
            )
        )
        .with_panel(
            graph(
                "Resolution",
                "From the handoff to its end, by resolution (p50).",
                "s",
                target(quantile(0.5, "zapflow_handoff_resolve_seconds", zf(), "resolution"), "{{resolution}}"),
            )
        )
        .with_row(dashboard.Row("Messages and notifications"))
        .with_panel(
            graph(
                "Forwarded customer messages",
                "Customer messages forwarded to a person instead of the bot.",
                "ops",
                target(rate("zapflow_handoff_forwarded_messages_total", zf()), "forwarded"),
            )
        )
        .with_panel(
            graph(
                "Agent messages",
                "Messages agents sent, by kind and outcome (refused_window: after the 24-hour window).",
                "ops",
                target(rate("zapflow_handoff_agent_messages_total", zf(), "kind, outcome"), "{{kind}} {{outcome}}"),
            )
        )
        .with_panel(
            graph(
                "Notifications",
                "Deliveries to the tenants' agent webhooks, by result.",
                "ops",
                target(rate("zapflow_handoff_notifications_total", zf(), "result"), "{{result}}"),
            )
        )
    )


def nats_jetstream() -> dashboard.Dashboard:
    """Streams and consumers from the NATS exporter, read on each consumer's (and stream's) leader."""
    consumers = f'{LEADER}, {PICKED_STREAMS}, consumer_name=~"$consumer"'
    streams = f'is_stream_leader="true", {PICKED_STREAMS}'
    by = "stream_name, consumer_name"
    return (
        board(
            "nats",
            "NATS JetStream",
            "zapflow's streams and consumers, from the NATS Prometheus exporter (-jsz=all); each value is read on"
            " the leader, so replicas of an R3 stream are not counted three times.",
            query_variable(
                "stream",
                "Stream",
                f"label_values({jetstream('stream_total_messages', ZAPFLOW_STREAMS)}, stream_name)",
            ),
            query_variable(
                "consumer",
                "Consumer",
                f"label_values({jetstream('consumer_num_pending', PICKED_STREAMS)}, consumer_name)",
            ),
        )
        .with_row(dashboard.Row("Consumers"))
        .with_panel(
            graph(
                "Pending",
                "Messages not yet delivered to each consumer.",
                "short",
                target(f"max by ({by}) ({jetstream('consumer_num_pending', consumers)})", "{{consumer_name}}"),
            )
        )
        .with_panel(
            graph(
                "Ack pending",
                "Messages delivered and not yet acknowledged (the conversation consumer holds a turn's messages).",
                "short",
                target(f"max by ({by}) ({jetstream('consumer_num_ack_pending', consumers)})", "{{consumer_name}}"),
            )
        )
        .with_panel(
            graph(
                "Redelivered",
                "Messages each consumer has redelivered and not yet acknowledged.",
                "short",
                target(f"max by ({by}) ({jetstream('consumer_num_redelivered', consumers)})", "{{consumer_name}}"),
            )
        )
        .with_panel(
            graph(
                "Lag (what KEDA scales on)",
                "Pending plus ack pending: the lag KEDA's nats-jetstream trigger reads.",
                "short",
                target(
                    f"max by ({by}) ({jetstream('consumer_num_pending', consumers)})"
                    f" + max by ({by}) ({jetstream('consumer_num_ack_pending', consumers)})",
                    "{{consumer_name}}",
                ),
                width=12,
            )
        )
        .with_panel(
            graph(
                "Redeliveries seen by zapflow",
                "Messages a zapflow consumer received more than once, and dead letters.",
                "ops",
                target(rate("zapflow_bus_redeliveries_total", "", "consumer"), "redelivered: {{consumer}}"),
                target(rate("zapflow_bus_dead_letters_total", "", "consumer"), "dead-lettered: {{consumer}}"),
                width=12,
            )
        )
        .with_row(dashboard.Row("Streams"))
        .with_panel(
            graph(
                "Messages",
                "Messages stored in each stream.",
                "short",
                target(f"max by (stream_name) ({jetstream('stream_total_messages', streams)})", "{{stream_name}}"),
                width=12,
            )
        )
        .with_panel(
            graph(
                "Bytes",
                "Bytes stored in each stream.",
                "bytes",
                target(f"max by (stream_name) ({jetstream('stream_total_bytes', streams)})", "{{stream_name}}"),
                width=12,
            )
        )
    )


def redis() -> dashboard.Dashboard:
    """Redis from redis_exporter."""
    instance = 'instance=~"$instance"'
    return (
        board(
            "redis",
            "Redis",
            "The Redis zapflow keeps its debounce, locks, idempotency keys and rate limits in (redis_exporter).",
            query_variable("instance", "Instance", "label_values(redis_up, instance)"),
        )
        .with_row(dashboard.Row("Health"))
        .with_panel(
            single("Up", "Whether the exporter reaches Redis.", "short", target(f"min(redis_up{{{instance}}})"))
        )
        .with_panel(
            single(
                "Memory used",
                "Memory Redis uses.",
                "bytes",
                target(f"max(redis_memory_used_bytes{{{instance}}})"),
            )
        )
        .with_panel(
            single(
                "Clients",
                "Connected clients.",
                "short",
                target(f"sum(redis_connected_clients{{{instance}}})"),
            )
        )
        .with_panel(
            single(
                "Blocked clients",
                "Clients blocked in a blocking call.",
                "short",
                target(f"sum(redis_blocked_clients{{{instance}}})"),
            )
        )
        .with_panel(
            single(
                "AOF last write",
                "1 when the last append-only-file write succeeded (zapflow's keys need AOF).",
                "short",
                target(f"min(redis_aof_last_write_status{{{instance}}})"),
            )
        )
        .with_panel(
            single(
                "Evicted keys (1h)",
                "Keys evicted for memory: zapflow's must never be (maxmemory-policy noeviction).",
                "short",
                target(f"sum(increase(redis_evicted_keys_total{{{instance}}}[1h]))"),
            )
        )
        .with_row(dashboard.Row("Load"))
        .with_panel(
            graph(
                "Commands",
                "Commands processed per second.",
                "ops",
                target(
                    f"sum by (instance) (rate(redis_commands_processed_total{{{instance}}}[{RATE}]))", "{{instance}}"
                ),
            )
        )
        .with_panel(
            graph(
                "Memory",
                "Memory used and the configured maximum.",
                "bytes",
                target(f"max by (instance) (redis_memory_used_bytes{{{instance}}})", "used {{instance}}"),
                target(f"max by (instance) (redis_memory_max_bytes{{{instance}}})", "max {{instance}}"),
            )
        )
        .with_panel(
            graph(
                "Slowest commands",
                "Mean time per call of the five slowest commands.",
                "s",
                target(
                    f"topk(5, sum by (cmd) (rate(redis_commands_duration_seconds_total{{{instance}}}[{RATE}]))"
                    f" / sum by (cmd) (rate(redis_commands_total{{{instance}}}[{RATE}])))",
                    "{{cmd}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Keyspace",
                "Key hits and misses per second.",
                "ops",
                target(f"sum(rate(redis_keyspace_hits_total{{{instance}}}[{RATE}]))", "hits"),
                target(f"sum(rate(redis_keyspace_misses_total{{{instance}}}[{RATE}]))", "misses"),
            )
        )
        .with_panel(
            graph(
                "Connections",
                "Connected clients, and connections refused (maxclients).",
                "short",
                target(f"sum(redis_connected_clients{{{instance}}})", "connected"),
                target(f"sum(rate(redis_rejected_connections_total{{{instance}}}[{RATE}]))", "rejected per second"),
            )
        )
    )


DASHBOARDS: dict[str, Callable[[], dashboard.Dashboard]] = {
    "platform-overview": platform_overview,
    "tenant": tenant_view,
    "conversation-engine": conversation_engine,
    "whatsapp-egress": whatsapp_egress,
    "scheduler-campaigns": scheduler_campaigns,
    "handoff": handoff,
    "nats-jetstream": nats_jetstream,
    "redis": redis,
}


def _number(panels: list[Panel | RowPanel]) -> None:
    """Stable panel ids (Grafana links to them) and query letters."""
    for number, panel in enumerate(panels, start=1):
        panel.id_val = number
        if isinstance(panel, Panel):
            for letter, query in zip(string.ascii_uppercase, panel.targets or [], strict=False):
                query.ref_id = letter  # type: ignore[attr-defined]


def build(name: str) -> dict[str, Any]:
    """A dashboard as Grafana's JSON model."""
    model = DASHBOARDS[name]().build()
    _number(model.panels or [])
    loaded: dict[str, Any] = json.loads(json.dumps(model, cls=JSONEncoder))
    return loaded


def render(name: str) -> str:
    return json.dumps(build(name), indent=2, sort_keys=True) + "\n"
