"""Every Prometheus metric zapflow exports, in one place so dashboards can be checked against it.

Names follow zapflow_<subsystem>_<what>_<unit>; `tenant` is the only high-level label, and no
label ever holds a phone number or a message id.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Gateway, inbound side.
WEBHOOK_REQUESTS = Counter(
    "zapflow_gateway_webhook_requests_total",
    "Webhook POSTs by outcome (accepted, dead_lettered: accepted with unreadable parts dead-lettered,"
    " bad_signature, unknown_tenant, too_large, unavailable).",
    ["tenant", "outcome"],
)
SIGNATURE_FAILURES = Counter(
    "zapflow_gateway_signature_failures_total",
    "Webhook POSTs refused because X-Hub-Signature-256 was missing or wrong.",
    ["tenant"],
)
WEBHOOK_UNKNOWN = Counter(
    "zapflow_gateway_webhook_unknown_total",
    "Message types and fields in webhooks that zapflow does not know: kept in the events' raw JSON, and a sign"
    " that Meta changed its payloads.",
    ["tenant", "kind"],
)
INBOUND_MESSAGES = Counter(
    "zapflow_gateway_inbound_messages_total",
    "Customer messages published to the bus, by WhatsApp message type.",
    ["tenant", "type"],
)
STATUS_UPDATES = Counter(
    "zapflow_gateway_status_updates_total",
    "Delivery statuses published to the bus, by status.",
    ["tenant", "status"],
)
WEBHOOK_SECONDS = Histogram(
    "zapflow_gateway_webhook_duration_seconds",
    "Time to answer a webhook POST, publishes included.",
    ["tenant"],
    buckets=LATENCY_BUCKETS,
)
PUBLISH_SECONDS = Histogram(
    "zapflow_bus_publish_duration_seconds",
    "Time from publish to JetStream acknowledgement.",
    ["tenant"],
    buckets=LATENCY_BUCKETS,
)

# Gateway, egress side.
OUTBOUND_REQUESTS = Counter(
    "zapflow_gateway_outbound_total",
    "Outbound commands by result (sent, failed, retried, duplicate, uncertain).",
    ["tenant", "result"],
)
WINDOW_VIOLATIONS = Counter(
    "zapflow_gateway_window_violations_total",
    "Sends refused by Meta because the 24-hour customer-service window was closed (131047).",
    ["tenant"],
)
OUTSIDE_WINDOW = Counter(
    "zapflow_gateway_outside_window_total",
    "Free-form messages not sent because the customer's 24-hour window was closed (zapflow's own check).",
    ["tenant", "sender"],
)
PACING_WAIT_SECONDS = Histogram(
    "zapflow_gateway_pacing_wait_seconds",
    "Time an outbound command waited so as not to message one customer too fast (pair rate).",
    ["tenant"],
    buckets=LATENCY_BUCKETS,
)
RATE_LIMIT_WAIT_SECONDS = Histogram(
    "zapflow_gateway_rate_limit_wait_seconds",
    "Time an outbound command waited for the number's throughput limit.",
    ["tenant"],
    buckets=LATENCY_BUCKETS,
)
GRAPH_API_SECONDS = Histogram(
    "zapflow_gateway_graph_api_duration_seconds",
    "Duration of WhatsApp Cloud API calls.",
    ["tenant"],
    buckets=LATENCY_BUCKETS,
)

# The bus, for every consumer.
DUPLICATES_DROPPED = Counter(
    "zapflow_bus_duplicates_dropped_total",
    "Messages dropped as duplicates, by layer (jetstream, message_key, turn_key, outbound_key, timer_key).",
    ["tenant", "layer"],
)
REDELIVERIES = Counter(
    "zapflow_bus_redeliveries_total",
    "Messages a consumer received more than once.",
    ["tenant", "consumer"],
)
DEAD_LETTERS = Counter(
    "zapflow_bus_dead_letters_total",
    'Messages moved to the dead-letter stream after their last allowed delivery; for consumer="webhook", the'
    " parts of webhook bodies the gateway could not read.",
    ["tenant", "consumer"],
)
HANDLER_SECONDS = Histogram(
    "zapflow_bus_handler_duration_seconds",
    "Time a consumer took to handle one message.",
    ["tenant", "consumer"],
    buckets=LATENCY_BUCKETS,
)

# Tenants.
TENANTS_LOADED = Gauge(
    "zapflow_tenants_loaded",
    "Tenants this process currently knows from the registry.",
)

# The conversation engine.
TURNS = Counter(
    "zapflow_conversation_turns_total",
    "Turns answered, by outcome (rule, greeting, fallback, llm, faq, error_fallback, handoff, forwarded,"
    " window_closed, opted_out).",
    ["tenant", "outcome"],
)
TURN_MESSAGES = Histogram(
    "zapflow_conversation_turn_messages",
    "Customer messages merged into one turn by the debounce.",
    ["tenant"],
    buckets=(1, 2, 3, 4, 5, 7, 10, 15, 20, 50),
)
TURN_LATENCY_SECONDS = Histogram(
    "zapflow_conversation_turn_latency_seconds",
    "From the debounce closing a turn to its answer being published.",
    ["tenant"],
    buckets=LATENCY_BUCKETS,
)
RESPONDER_SECONDS = Histogram(
    "zapflow_conversation_responder_duration_seconds",
    "Time a responder took to answer a turn.",
    ["tenant", "responder"],
    buckets=LATENCY_BUCKETS,
)
RESPONDER_ERRORS = Counter(
    "zapflow_conversation_responder_errors_total",
    "Responder failures answered with the tenant's fallback, by kind (timeout, connection, malformed...).",
    ["tenant", "kind"],
)
TURNS_IN_FLIGHT = Gauge(
    "zapflow_conversation_turns_in_flight",
    "Turns being answered right now by this process.",
    ["tenant"],
)
LOCK_WAITS = Counter(
    "zapflow_conversation_lock_waits_total",
    "Times a due turn waited because its contact's previous turn was still being answered.",
    ["tenant"],
)
HELD_MESSAGES = Gauge(
    "zapflow_conversation_held_messages",
    "Inbound messages this process holds unacknowledged until their turn is answered.",
)
# `job_name`, not `job`: Prometheus' own `job` label (the scrape's) would rename ours to `exported_job`.
JOB_SECONDS = Histogram(
    "zapflow_scheduler_job_seconds",
    "Duration of one run of a scheduler job (close_idle, archive, retention).",
    ["job_name"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0),
)
JOB_FAILURES = Counter(
    "zapflow_scheduler_job_failures_total",
    "Scheduler job runs that failed; the job runs again at the next interval.",
    ["job_name"],
)
JOB_LAST_SUCCESS = Gauge(
    "zapflow_scheduler_job_last_success_timestamp_seconds",
    "When each scheduler job last completed (alert when it falls behind).",
    ["job_name"],
)
SESSIONS_CLOSED = Counter("zapflow_scheduler_sessions_closed_total", "Idle conversations closed.")
SESSIONS_ARCHIVED = Counter("zapflow_scheduler_sessions_archived_total", "Closed conversations archived to analytics.")
RETENTION_DELETED_ROWS = Counter(
    "zapflow_scheduler_retention_deleted_rows_total",
    "Rows deleted because they outlived their tenant's retention, by store (sql, analytics).",
    ["store"],
)
OPEN_CONVERSATIONS = Gauge(
    "zapflow_conversations_open",
    "Conversations open now, per tenant (computed by the scheduler's leader once per interval).",
    ["tenant"],
)
CONTACTS_IN_WINDOW = Gauge(
    "zapflow_contacts_in_window",
    "Contacts who wrote in the last 24 hours (free text may reach them), per tenant (scheduler's leader).",
    ["tenant"],
)
CAMPAIGNS_ACTIVE = Gauge(
    "zapflow_campaigns_active",
    "Campaigns scheduled, running or waiting (for the messaging limit, a retry), per tenant (scheduler's leader).",
    ["tenant"],
)
CAMPAIGN_RECIPIENTS = Gauge(
    "zapflow_campaign_recipients",
    "Recipients of the tenant's active campaigns by state (queued, sending, sent, delivered, read, failed,"
    " skipped): their progress, computed by the scheduler's leader once per interval.",
    ["tenant", "state"],
)
REENGAGEMENTS = Counter(
    "zapflow_scheduler_reengagements_total",
    "Re-engagement nudges that came due, by rule and outcome (sent_text, sent_template, skipped_<why>).",
    ["tenant", "rule", "outcome"],
)
TIMERS_SCHEDULED = Counter(
    "zapflow_scheduler_timers_scheduled_total",
    "Timers scheduled (a replacement counts again).",
    ["tenant", "kind"],
)
TIMERS_FIRED = Counter(
    "zapflow_scheduler_timers_fired_total",
    "Fired timers whose handler ran to completion.",
    ["tenant", "kind"],
)
TIMERS_SKIPPED_LATE = Counter(
    "zapflow_scheduler_timers_skipped_late_total",
    "Fired timers not handled because they came later than their kind allows (the scheduler was down).",
    ["tenant", "kind"],
)
TIMERS_CANCELLED = Counter(
    "zapflow_scheduler_timers_cancelled_total",
    "Timers cancelled before they were handled.",
    ["tenant", "kind"],
)
# From milliseconds (on time) to a day (fired after an outage).
LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0)
TIMER_LATENESS_SECONDS = Histogram(
    "zapflow_scheduler_timer_lateness_seconds",
    "How long after its due time a fired timer reached its handler (or was skipped).",
    ["kind"],
    buckets=LATENESS_BUCKETS,
)
CAMPAIGN_MESSAGES = Counter(
    "zapflow_scheduler_campaign_messages_total",
    "Campaign messages by outcome: published (handed to egress), skipped (opted out, marketing stopped, a person"
    " has the conversation), sent, delivered, read, failed, deferred (131049: tried again a day later).",
    ["tenant", "outcome"],
)
ERASURES = Counter("zapflow_privacy_erasures_total", "Contacts erased at a tenant's request.", ["tenant"])

# The recorder.
RECORDER_BATCH_EVENTS = Histogram(
    "zapflow_recorder_batch_events",
    "Events per batch the recorder wrote, each batch in one transaction.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)

# The conversation engine's safety nets: each failure it survives is logged and counted here.
ENGINE_FAILURES = Counter(
    "zapflow_conversation_engine_failures_total",
    "Failures the conversation engine survived, by kind: closer (a due-set scan), turn (retried after its"
    " lease), lock (extending a turn's lock), turn_event (undecodable), ack and heartbeat (held messages,"
    " redelivered), rearm (deadlines of held messages), history (the store's history unavailable), sweep"
    " (moving a tenant's own due set into the shared one once it is no longer dedicated).",
    ["kind"],
)

# Embedding service: knowledge bases and the turn index.
KNOWLEDGE_SEARCH_SECONDS = Histogram(
    "zapflow_knowledge_search_seconds",
    "Knowledge searches served, question embedding included, by collection (knowledge, turns).",
    ["tenant", "collection"],
    buckets=LATENCY_BUCKETS,
)
KNOWLEDGE_REQUESTS = Counter(
    "zapflow_knowledge_requests_total",
    "Knowledge requests over NATS by operation and outcome (ok, invalid, quota, not_found, failed).",
    ["tenant", "operation", "outcome"],
)
KNOWLEDGE_CHUNKS_EMBEDDED = Counter(
    "zapflow_knowledge_embedded_total",
    "Texts run through the embedding model (a text already embedded by the model is not counted again).",
    ["tenant", "collection"],
)
KNOWLEDGE_ENTRIES = Gauge(
    "zapflow_knowledge_entries",
    "Entries in this replica's in-memory index, by collection (knowledge chunks, turns).",
    ["tenant", "collection"],
)
FAQ_ANSWERS = Counter(
    "zapflow_conversation_faq_answers_total",
    "Turns the faq responder handled, by outcome (answered, below_threshold, no_knowledge, no_text, unavailable).",
    ["tenant", "outcome"],
)

# Handoff service: conversations with a person, and the agents' inbox.
WAIT_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
HANDOFFS = Counter(
    "zapflow_handoffs_total",
    "Conversations handed to a person, by reason (customer_asked, rule, llm, faq_misses, responder_failures,"
    " agent_took).",
    ["tenant", "reason"],
)
HANDOFF_QUEUE = Gauge(
    "zapflow_handoff_queue_length",
    "Conversations waiting in the tenant's queue for an agent.",
    ["tenant"],
)
HANDOFF_OLDEST_WAIT = Gauge(
    "zapflow_handoff_oldest_wait_seconds",
    "How long the oldest conversation in the tenant's queue has waited (0: none waits).",
    ["tenant"],
)
HANDOFF_FIRST_REPLY_SECONDS = Histogram(
    "zapflow_handoff_first_reply_seconds",
    "From the handoff to the first agent reply.",
    ["tenant"],
    buckets=WAIT_BUCKETS,
)
HANDOFF_RESOLVE_SECONDS = Histogram(
    "zapflow_handoff_resolve_seconds",
    "From the handoff to its end (resolved by an agent, or timed out back to the bot).",
    ["tenant", "resolution"],
    buckets=WAIT_BUCKETS,
)
HANDOFF_FORWARDED = Counter(
    "zapflow_handoff_forwarded_messages_total",
    "Customer messages forwarded to a person instead of being answered by the bot.",
    ["tenant"],
)
HANDOFF_AGENT_MESSAGES = Counter(
    "zapflow_handoff_agent_messages_total",
    "Messages agents sent, by kind (text, template) and outcome (queued, refused_window).",
    ["tenant", "kind", "outcome"],
)
HANDOFF_NOTIFICATIONS = Counter(
    "zapflow_handoff_notifications_total",
    "Deliveries to the tenants' agent webhooks, by result (delivered, failed: retried later, dead_lettered:"
    " given up after the last attempt).",
    ["tenant", "result"],
)
AGENTS_ONLINE = Gauge(
    "zapflow_handoff_agents_online",
    "Agents with an inbox open (a heartbeat within the presence window).",
    ["tenant"],
)

# The operator (set by the replica that acts; a standby keeps what it last set while it acted).
OPERATOR_SYNCS = Counter(
    "zapflow_operator_syncs_total",
    "BotTenant syncs (create, update, resume, retries) by the reason of the Ready condition they ended with"
    " (Synced, InvalidSpec, SecretMissing, PhoneNumberTaken, ...: docs/operator.md).",
    ["reason"],
)
OPERATOR_TENANT_READY = Gauge(
    "zapflow_operator_tenant_ready",
    "1 while a BotTenant's Ready condition is True, 0 while it is False; gone once the BotTenant is deleted.",
    ["tenant"],
)
OPERATOR_DRIFT_REPAIRS = Counter(
    "zapflow_operator_drift_repairs_total",
    "Registry entries the resync timer found edited or removed by hand and rewrote from their BotTenant.",
    ["tenant"],
)
