"""The catalogue of the bus: every stream, subject, filter and durable consumer zapflow uses.

Nothing outside this module (and `keys.py` for Redis) spells a subject or a stream name: a test
scans services, bench and tests for such literals. Subjects carry the tenant and the contact so
that consumers can filter and partition and an erasure can find every message about one
customer:

    zf.in.<tenant>.<contact>                 customer messages         ZF_INBOUND
    zf.status.<tenant>.<contact>             delivery statuses         ZF_STATUS
    zf.out.<tenant>.<contact>                commands for the Graph API ZF_OUTBOUND
    zf.evt.<kind>.<tenant>.<contact>         turns and send results    ZF_EVENTS
    zf.dlq.<service>.<original subject>      dead letters              ZF_DLQ
    zf.knowledge.<tenant>.<kind>             knowledge changes         ZF_KNOWLEDGE
    zf.kb.<operation>.<tenant>               knowledge requests        (core NATS request/reply)
    zf.inbox.<tenant>                        inbox activity            (core NATS, to every handoff replica)
    zf.health.<service>.<instance>           a replica's readiness     (core NATS request/reply)
    zf.timer.<kind>.<tenant>.<key>           timers waiting (schedules) ZF_TIMERS
    zf.due.<kind>.<tenant>.<key>             timers fired              ZF_TIMERS
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from nats.js import api

DAY = 86_400.0
ROOT = "zf"


@dataclass(frozen=True)
class StreamSpec:
    """A stream zapflow owns. Limits are documented in docs/bus.md."""

    name: str
    subjects: tuple[str, ...]
    description: str
    max_age_s: float
    max_bytes: int = -1
    # JetStream's default; Meta retries for days, so idempotency keys back this up.
    duplicate_window_s: float = 120.0
    # When full: refuse new messages (the publisher sees an error) instead of dropping the oldest.
    discard_new: bool = False
    # nats-server holds messages with a Nats-Schedule header and publishes them when due (ADR-51).
    allow_msg_schedules: bool = False
    # Direct gets: the last message of a subject read without the JetStream API's queue.
    allow_direct: bool = False

    def config(self, replicas: int) -> api.StreamConfig:
        return api.StreamConfig(
            name=self.name,
            description=self.description,
            subjects=list(self.subjects),
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.NEW if self.discard_new else api.DiscardPolicy.OLD,
            max_age=self.max_age_s,
            max_bytes=self.max_bytes,
            duplicate_window=self.duplicate_window_s,
            num_replicas=replicas,
            allow_msg_schedules=self.allow_msg_schedules or None,
            # Per-message TTLs too, so that a schedule can say `Nats-TTL: never` and wait longer than max_age.
            allow_msg_ttl=self.allow_msg_schedules or None,
            allow_direct=self.allow_direct or None,
        )


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer and its delivery policy."""

    stream: StreamSpec
    durable: str
    filter_subject: str
    service: str
    # Long enough for a Graph API call with retries; handlers that run longer heartbeat.
    ack_wait_s: float = 30.0
    # Attempts before dead-lettering; the server allows one more so a message that crashed
    # the process on every attempt still reaches the dead-letter stream.
    max_attempts: int = 5
    backoff_s: tuple[float, ...] = (1.0, 5.0, 15.0, 60.0)
    max_ack_pending: int = 2000
    batch: int = 64
    # Messages handled at once by one process (held messages count only while their handler runs).
    max_in_flight: int = 256
    # Several filters instead of `filter_subject` (a shard's tenants); NATS 2.10 and later.
    filter_subjects: tuple[str, ...] = ()
    # Start with the messages published after the consumer is created, not the stream's oldest.
    deliver_new: bool = False

    def config(self) -> api.ConsumerConfig:
        several = len(self.filter_subjects) > 1
        return api.ConsumerConfig(
            durable_name=self.durable,
            filter_subject=None if several else (self.filter_subjects or (self.filter_subject,))[0],
            filter_subjects=list(self.filter_subjects) if several else None,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.NEW if self.deliver_new else api.DeliverPolicy.ALL,
            ack_wait=self.ack_wait_s,
            max_deliver=self.max_attempts + 1,
            max_ack_pending=self.max_ack_pending,
        )

    def delay_after(self, attempt: int) -> float:
        return self.backoff_s[min(attempt, len(self.backoff_s)) - 1]


# --- services that own consumers or dead letters ---

CONVERSATION_SERVICE = "conversation"
GATEWAY_SERVICE = "gateway"
RECORDER_SERVICE = "recorder"
EMBEDDING_SERVICE = "embedding"
HANDOFF_SERVICE = "handoff"
SCHEDULER_SERVICE = "scheduler"

# --- subjects ---

INBOUND_PREFIX = f"{ROOT}.in"
STATUS_PREFIX = f"{ROOT}.status"
OUTBOUND_PREFIX = f"{ROOT}.out"
EVENTS_PREFIX = f"{ROOT}.evt"
DEAD_LETTER_PREFIX = f"{ROOT}.dlq"
KNOWLEDGE_PREFIX = f"{ROOT}.knowledge"
KNOWLEDGE_REQUEST_PREFIX = f"{ROOT}.kb"
INBOX_PREFIX = f"{ROOT}.inbox"
HEALTH_PREFIX = f"{ROOT}.health"
TIMER_PREFIX = f"{ROOT}.timer"
DUE_PREFIX = f"{ROOT}.due"

# Event kinds: the token after zf.evt.
TURN = "turn"  # a turn was answered (turn_pb2.Turn)
SENT = "sent"  # the outcome of one Graph API call (outbound_pb2.SendResult)
HANDOFF = "handoff"  # a turn asked for a person, or forwarded to one (handoff_pb2.HandoffEvent)
NOTIFY = "notify"  # a notification owed to a tenant's agents (handoff_pb2.AgentNotification)


def every(prefix: str) -> str:
    """The wildcard that matches every subject under a prefix."""
    return f"{prefix}.>"


def inbound_subject(tenant: str, contact: str) -> str:
    return f"{INBOUND_PREFIX}.{tenant}.{contact}"


def status_subject(tenant: str, contact: str) -> str:
    return f"{STATUS_PREFIX}.{tenant}.{contact}"


def outbound_subject(tenant: str, contact: str) -> str:
    return f"{OUTBOUND_PREFIX}.{tenant}.{contact}"


def event_subject(kind: str, tenant: str, contact: str) -> str:
    """Events carry the contact too, so an erasure can find every event about one customer."""
    return f"{EVENTS_PREFIX}.{kind}.{tenant}.{contact}"


def turn_subject(tenant: str, contact: str) -> str:
    return event_subject(TURN, tenant, contact)


def result_subject(tenant: str, contact: str) -> str:
    return event_subject(SENT, tenant, contact)


def handoff_subject(tenant: str, contact: str) -> str:
    return event_subject(HANDOFF, tenant, contact)


def notification_subject(tenant: str, contact: str) -> str:
    return event_subject(NOTIFY, tenant, contact)


def inbox_subject(tenant: str = "*") -> str:
    """Inbox activity of a tenant (or every tenant): what each handoff replica relays to its open inboxes.

    Core NATS, not a stream: an inbox that misses a change re-reads the queue when it reconnects.
    """
    return f"{INBOX_PREFIX}.{tenant}"


# Every running service is on the NATS service API ($SRV.PING / INFO / STATS) under this name, so
# `zapflow status` counts its replicas with their version and uptime; "zapflow-" keeps zapflow's
# apart from other applications' services on a shared NATS.
SERVICE_API_PREFIX = "zapflow-"


def service_api_name(service: str) -> str:
    """The name a service answers the NATS service API under."""
    return f"{SERVICE_API_PREFIX}{service}"


def health_subject(service: str, instance: str) -> str:
    """Where one replica of a service answers with its readiness (its service API instance id)."""
    return f"{HEALTH_PREFIX}.{service}.{instance}"


def timer_subject(kind: str, tenant: str, key: str) -> str:
    """Where a timer waits: one schedule per subject, so scheduling again replaces it."""
    return f"{TIMER_PREFIX}.{kind}.{tenant}.{key}"


def due_subject(kind: str, tenant: str, key: str) -> str:
    """Where nats-server publishes a timer when it is due."""
    return f"{DUE_PREFIX}.{kind}.{tenant}.{key}"


def timer_subjects(kind: str, tenant: str, key: str) -> str:
    """Both subjects of a timer, waiting and fired: the newest message on them is the newest schedule call."""
    return f"{ROOT}.*.{kind}.{tenant}.{key}"


def events_of(kind: str, tenant: str = "*") -> str:
    """Every event of a kind, for every tenant or for one."""
    return every(f"{EVENTS_PREFIX}.{kind}") if tenant == "*" else every(f"{EVENTS_PREFIX}.{kind}.{tenant}")


# Knowledge changes: what every embedding replica applies to its in-memory index. They name a
# document or a row, never a contact, so they hold nothing an erasure must find.
DOCUMENT_CHANGED = "document"  # a document was ingested, replaced or removed (reload it from SQL)
TURN_EMBEDDED = "turn"  # a turn was embedded (load its row)
TURNS_FORGOTTEN = "forget"  # turn rows were erased or expired (drop them)
TENANT_ERASED = "erased"  # every row of the tenant was erased (reload the tenant from SQL: nothing)
KNOWLEDGE_CHANGES = (DOCUMENT_CHANGED, TURN_EMBEDDED, TURNS_FORGOTTEN, TENANT_ERASED)

# Knowledge requests, served by the embedding service in one queue group.
KNOWLEDGE_OPERATIONS = ("search", "embed", "commit", "list", "show", "remove")
KNOWLEDGE_QUEUE = EMBEDDING_SERVICE


def knowledge_change_subject(tenant: str, kind: str) -> str:
    return f"{KNOWLEDGE_PREFIX}.{tenant}.{kind}"


def knowledge_request_subject(operation: str, tenant: str) -> str:
    """Where a knowledge request about one tenant goes; the tenant is always in the subject."""
    if operation not in KNOWLEDGE_OPERATIONS:
        raise ValueError(f"no knowledge operation {operation!r}")
    return f"{KNOWLEDGE_REQUEST_PREFIX}.{operation}.{tenant}"


def knowledge_requests(tenant: str = "*") -> str:
    """Every knowledge request, for every tenant or one (what a replica subscribes to)."""
    return f"{KNOWLEDGE_REQUEST_PREFIX}.*.{tenant}"


def request_operation(subject: str) -> tuple[str, str]:
    """The operation and the tenant of a knowledge request's subject."""
    _, _, operation, tenant = subject.split(".", 3)
    return operation, tenant


def dead_letter_subject(service: str, original_subject: str) -> str:
    return f"{DEAD_LETTER_PREFIX}.{service}.{original_subject}"


def dead_letter_origin(subject: str) -> tuple[str, str]:
    """The service and the original subject of a dead letter's subject."""
    service, _, original = subject.removeprefix(f"{DEAD_LETTER_PREFIX}.").partition(".")
    return service, original


def contact_of(subject: str) -> str:
    """The contact of a subject about one contact: every such subject ends with it."""
    return subject.rsplit(".", 1)[-1]


def dead_letters_of(service: str) -> str:
    return every(f"{DEAD_LETTER_PREFIX}.{service}")


# The DeadLetter.consumer of the parts of a webhook body the gateway could not read. They are
# filed under the subject the part would have had, so an erasure of the contact finds them; a
# part whose contact cannot be read (or a whole unreadable body) is filed under UNATTRIBUTED.
WEBHOOK_DEAD_LETTERS = "webhook"
UNATTRIBUTED = "unknown"


def webhook_part_subject(tenant: str, contact: str | None, status: bool = False) -> str:
    """The subject a webhook part would have had (contact None: not readable)."""
    original = status_subject if status else inbound_subject
    return original(tenant, contact or UNATTRIBUTED)


def webhook_dead_letter_subject(tenant: str, contact: str | None, status: bool = False) -> str:
    """Where the gateway files a webhook part it could not read."""
    return dead_letter_subject(GATEWAY_SERVICE, webhook_part_subject(tenant, contact, status))


def unattributed_dead_letters(tenant: str) -> str:
    """The tenant's dead letters whose contact could not be read (erasure searches their bytes)."""
    return dead_letter_subject("*", f"{ROOT}.*.{tenant}.{UNATTRIBUTED}")


def tenant_of(subject: str) -> str:
    """The tenant token of any zapflow subject (zf.<kind>.<tenant>... or zf.evt|timer|due.<kind>.<tenant>...)."""
    tokens = subject.split(".")
    if len(tokens) > 3 and tokens[1] == "dlq":
        return tenant_of(".".join(tokens[3:]))
    index = 3 if len(tokens) > 3 and tokens[1] in ("evt", "timer", "due") else 2
    return tokens[index] if len(tokens) > index else "unknown"


# --- streams ---

# Size limits are left to the deployment (JetStream's max_store, account limits): a fixed size
# per stream would be reserved against the server's storage and refuse to start on a small disk.
# When a size limit is reached, a full inbound stream refuses new messages: the gateway answers
# 503 and Meta retries later, rather than the oldest unanswered messages being dropped (I1).
INBOUND = StreamSpec(
    "ZF_INBOUND", (every(INBOUND_PREFIX),), "Customer messages from WhatsApp", 7 * DAY, discard_new=True
)
STATUS = StreamSpec("ZF_STATUS", (every(STATUS_PREFIX),), "Delivery statuses from WhatsApp", 7 * DAY)
OUTBOUND = StreamSpec("ZF_OUTBOUND", (every(OUTBOUND_PREFIX),), "Commands for the WhatsApp Cloud API", 7 * DAY)
EVENTS = StreamSpec("ZF_EVENTS", (every(EVENTS_PREFIX),), "Turns and outbound results", 30 * DAY)
DEAD_LETTER = StreamSpec("ZF_DLQ", (every(DEAD_LETTER_PREFIX),), "Messages that exhausted their deliveries", 30 * DAY)
# A replica that starts loads the index from SQL, then applies changes from the moment it began
# loading: a day covers any start-up; older changes are already in SQL.
KNOWLEDGE = StreamSpec(
    "ZF_KNOWLEDGE", (every(KNOWLEDGE_PREFIX),), "Knowledge-base and turn-index changes for embedding replicas", DAY
)
# Timers: the schedules nats-server holds until they are due, and what it fires. A schedule carries
# `Nats-TTL: never`, so it waits however long it must; max_age applies to fired timers only, which
# a consumer down for longer than that would lose, as with every other stream.
TIMER_STREAM = StreamSpec(
    "ZF_TIMERS",
    (every(TIMER_PREFIX), every(DUE_PREFIX)),
    "Timers waiting (message schedules) and fired",
    7 * DAY,
    allow_msg_schedules=True,
    # Every fired timer is checked against the newest message of its key (scheduler/timers.py).
    allow_direct=True,
)
ALL_STREAMS = (INBOUND, STATUS, OUTBOUND, EVENTS, DEAD_LETTER, KNOWLEDGE, TIMER_STREAM)


def contact_subjects(tenant: str, contact: str) -> dict[str, tuple[str, ...]]:
    """Every subject that can carry a message about the contact, by stream (what erasure walks)."""
    return {
        INBOUND.name: (inbound_subject(tenant, contact),),
        STATUS.name: (status_subject(tenant, contact),),
        OUTBOUND.name: (outbound_subject(tenant, contact),),
        EVENTS.name: (event_subject("*", tenant, contact),),
        # A dead letter's subject is the original one behind zf.dlq.<service>; events have one
        # token more than the other kinds.
        DEAD_LETTER.name: (
            dead_letter_subject("*", f"{ROOT}.*.{tenant}.{contact}"),
            dead_letter_subject("*", event_subject("*", tenant, contact)),
            dead_letter_subject("*", due_subject("*", tenant, contact)),
        ),
        # Timers keyed by the contact: erasing a waiting schedule also cancels it.
        TIMER_STREAM.name: (timer_subject("*", tenant, contact), due_subject("*", tenant, contact)),
    }


def tenant_subjects(tenant: str) -> dict[str, tuple[str, ...]]:
    """Every subject that can carry a message of the tenant, by stream (what a tenant erasure purges).

    Each filter puts the tenant at its kind's own position: one like zf.*.<tenant>.> would also
    take every tenant's turns when a tenant is named after an event kind ("turn").
    """
    tenant_second = [every(f"{prefix}.{tenant}") for prefix in (INBOUND_PREFIX, STATUS_PREFIX, OUTBOUND_PREFIX)]
    knowledge = every(f"{KNOWLEDGE_PREFIX}.{tenant}")
    events = every(f"{EVENTS_PREFIX}.*.{tenant}")
    timers = (every(f"{TIMER_PREFIX}.*.{tenant}"), every(f"{DUE_PREFIX}.*.{tenant}"))
    originals = (*tenant_second, knowledge, events, *timers)
    return {
        INBOUND.name: (tenant_second[0],),
        STATUS.name: (tenant_second[1],),
        OUTBOUND.name: (tenant_second[2],),
        EVENTS.name: (events,),
        # Unattributed letters (zf.in.<tenant>.unknown) included.
        DEAD_LETTER.name: tuple(dead_letter_subject("*", original) for original in originals),
        KNOWLEDGE.name: (knowledge,),
        TIMER_STREAM.name: timers,
    }


# --- durable consumers ---

CONVERSATION_INBOUND = ConsumerSpec(
    stream=INBOUND,
    durable="conversation",
    filter_subject=every(INBOUND_PREFIX),
    service=CONVERSATION_SERVICE,
    # Held messages wait for their turn: debounce (10 s at most) plus the responder.
    ack_wait_s=30.0,
    max_ack_pending=50_000,
    batch=256,
)

EGRESS = ConsumerSpec(
    stream=OUTBOUND,
    durable="gateway-egress",
    filter_subject=every(OUTBOUND_PREFIX),
    service=GATEWAY_SERVICE,
    ack_wait_s=60.0,
    backoff_s=(1.0, 2.0, 5.0, 15.0, 60.0),
    # Generous: waiting for an earlier command to the same contact also takes a delivery, and
    # that wait must outlast a dead replica's ack wait (20 × 0.25 s, then 2 s each: ~6 min).
    max_attempts=200,
)


def _recorder(stream: StreamSpec, durable: str, subjects: str) -> ConsumerSpec:
    return ConsumerSpec(stream=stream, durable=durable, filter_subject=subjects, service=RECORDER_SERVICE, batch=256)


# The recorder has one consumer per kind of event, so one kind's backlog never delays another.
RECORD_INBOUND = _recorder(INBOUND, "store-inbound", every(INBOUND_PREFIX))
RECORD_OUTBOUND = _recorder(OUTBOUND, "store-outbound", every(OUTBOUND_PREFIX))
RECORD_STATUSES = _recorder(STATUS, "store-statuses", every(STATUS_PREFIX))
RECORD_TURNS = _recorder(EVENTS, "store-turns", events_of(TURN))
RECORD_RESULTS = _recorder(EVENTS, "store-results", events_of(SENT))

# Finished turns, embedded so that past conversations can be searched by meaning.
EMBED_TURNS = ConsumerSpec(
    stream=EVENTS,
    durable="embedding-turns",
    filter_subject=events_of(TURN),
    service=EMBEDDING_SERVICE,
    # A batch of turns is embedded at once; a local model takes about 50 ms a turn on one core.
    ack_wait_s=60.0,
    batch=32,
    max_in_flight=64,
)


# Turns that asked for a person, and customer messages forwarded to one, in each contact's order.
HANDOFF_EVENTS = ConsumerSpec(
    stream=EVENTS,
    durable="handoff-events",
    filter_subject=events_of(HANDOFF),
    service=HANDOFF_SERVICE,
    # The handler takes milliseconds: a replica that died holding an event hands it on quickly, so
    # the agent sees the message late by seconds rather than half a minute.
    ack_wait_s=10.0,
)

# Notifications to the tenants' agent webhooks: retried with backoff, then dead-lettered (never
# retried forever). The delays add up to about 40 minutes before a notification is given up.
HANDOFF_NOTIFY = ConsumerSpec(
    stream=EVENTS,
    durable="handoff-notify",
    filter_subject=events_of(NOTIFY),
    service=HANDOFF_SERVICE,
    ack_wait_s=30.0,
    max_attempts=8,
    backoff_s=(2.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1200.0),
)

# Fired timers (scheduler/timers.py). A handler publishes a few messages: a replica that died
# holding a fired timer hands it on within the ack wait, the most a crash adds to its lateness.
TIMERS = ConsumerSpec(
    stream=TIMER_STREAM,
    durable="scheduler-timers",
    filter_subject=every(DUE_PREFIX),
    service=SCHEDULER_SERVICE,
    ack_wait_s=10.0,
)


# Every answered turn decides a contact's re-engagement nudge: scheduled (replacing the one before)
# when a rule fits the turn, cancelled when none does.
REENGAGE_TURNS = ConsumerSpec(
    stream=EVENTS,
    durable="scheduler-reengage-turns",
    filter_subject=events_of(TURN),
    service=SCHEDULER_SERVICE,
)


# Campaigns follow their messages: what the Graph API made of each send (only `cp:` commands concern
# them; the rest are acknowledged at once), then Meta's delivery statuses, matched by wamid.
CAMPAIGN_RESULTS = ConsumerSpec(
    stream=EVENTS,
    durable="scheduler-campaign-results",
    filter_subject=events_of(SENT),
    service=SCHEDULER_SERVICE,
)
CAMPAIGN_STATUSES = ConsumerSpec(
    stream=STATUS,
    durable="scheduler-campaign-statuses",
    filter_subject=every(STATUS_PREFIX),
    service=SCHEDULER_SERVICE,
    # A status can overtake the send result that tells which recipient its wamid is: it waits for
    # it (the handler gives up after 15 tries, about a minute; more are left for outages).
    max_attempts=20,
    backoff_s=(1.0, 2.0, 5.0, 15.0, 60.0),
)


def turns_of(tenants: Sequence[str]) -> tuple[str, ...]:
    """The turn events of these tenants, one filter each."""
    return tuple(events_of(TURN, tenant) for tenant in tenants)


def shard_consumer(spec: ConsumerSpec, shard: str, filters: tuple[str, ...]) -> ConsumerSpec:
    """The consumer of one shard of tenants: a durable of its own, over its tenants' subjects only."""
    return replace(spec, durable=f"{spec.durable}-{shard}", filter_subjects=filters)


def dedicated_conversation_consumer(tenant: str) -> ConsumerSpec:
    """The consumer of a tenant's own conversation replicas (`conversation-<tenant>`): its inbound messages.

    It starts with the messages published after it was created: the shared `conversation` consumer
    ingests every tenant's messages, these included, so nothing before it is left unread.
    """
    shard = shard_consumer(CONVERSATION_INBOUND, tenant, (every(f"{INBOUND_PREFIX}.{tenant}"),))
    return replace(shard, deliver_new=True)


ALL_CONSUMERS = (
    CONVERSATION_INBOUND,
    EGRESS,
    RECORD_INBOUND,
    RECORD_OUTBOUND,
    RECORD_STATUSES,
    RECORD_TURNS,
    RECORD_RESULTS,
    EMBED_TURNS,
    HANDOFF_EVENTS,
    HANDOFF_NOTIFY,
    TIMERS,
    REENGAGE_TURNS,
    CAMPAIGN_RESULTS,
    CAMPAIGN_STATUSES,
)
