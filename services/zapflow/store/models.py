"""The relational schema: contacts, conversations, messages, delivery statuses, turns, handoffs and agents.

Tenant isolation is built into the keys: every table carries `tenant`, every key and index starts
with it, and every foreign key includes it, so a row can only ever point at a row of its own
tenant. The Alembic migrations in `migrations/` create exactly this schema (a test compares them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Dialect,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import DateTime, TypeDecorator

# Explicit constraint names: Alembic needs them to alter or drop a constraint later, and SQLite's
# batch mode (table rebuilds) needs them to carry constraints over.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

INBOUND = "inbound"
OUTBOUND = "outbound"

CONVERSATION_OPEN = "open"
CONVERSATION_CLOSED = "closed"

# Delivery statuses in the order they can only move forward; "failed" is terminal.
STATUS_ORDER = ("sent", "delivered", "read", "failed")

# A handoff waits in its tenant's queue, is assigned to an agent, and is resolved (back to the bot).
HANDOFF_WAITING = "waiting"
HANDOFF_ASSIGNED = "assigned"
HANDOFF_RESOLVED = "resolved"
HANDOFF_STATES = (HANDOFF_WAITING, HANDOFF_ASSIGNED, HANDOFF_RESOLVED)
EMAIL_LENGTH = 254

TENANT_LENGTH = 63  # a tenant name is a DNS label
WA_ID_LENGTH = 32
ID_LENGTH = 128  # wamids, command ids, turn ids
HASH_LENGTH_SHA256 = 64  # hex


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every database.

    PostgreSQL keeps the zone itself; SQLite has no datetime type, so the value is stored as naive
    UTC text (which sorts like time) and given its zone back when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the store only takes aware (UTC) times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# BIGINT on PostgreSQL; on SQLite only "INTEGER PRIMARY KEY" auto-increments.
AutoId = BigInteger().with_variant(Integer, "sqlite")
Document = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime(), dict[str, Any]: Document}


def _contact_key(table: str) -> ForeignKeyConstraint:
    return ForeignKeyConstraint(
        ["tenant", "contact"], ["contacts.tenant", "contacts.wa_id"], name=f"fk_{table}_contact"
    )


def _conversation_key(table: str) -> ForeignKeyConstraint:
    return ForeignKeyConstraint(
        ["tenant", "conversation_id"],
        ["conversations.tenant", "conversations.id"],
        name=f"fk_{table}_conversation",
    )


class Contact(Base):
    """A customer of a tenant, by WhatsApp id."""

    __tablename__ = "contacts"
    __table_args__ = (
        # Contacts whose 24-hour customer-service window closes soon (re-engagement).
        Index("ix_contacts_tenant_last_customer_message_at", "tenant", "last_customer_message_at"),
    )

    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH), primary_key=True)
    wa_id: Mapped[str] = mapped_column(String(WA_ID_LENGTH), primary_key=True)
    profile_name: Mapped[str | None] = mapped_column(Text)
    # When zapflow first recorded anything about the contact.
    first_seen_at: Mapped[datetime]
    # The last sign of life from the customer: a message, or reading one of ours.
    last_seen_at: Mapped[datetime | None]
    # Meta's timestamp of the customer's latest message: the 24-hour window runs from it.
    last_customer_message_at: Mapped[datetime | None]


class Conversation(Base):
    """A session with a contact: opened by the first message, closed by the scheduler."""

    __tablename__ = "conversations"
    __table_args__ = (
        _contact_key("conversations"),
        # Lets messages, turns and handoffs reference (tenant, id): a row can only point at a
        # conversation of its own tenant.
        UniqueConstraint("tenant", "id", name="uq_conversations_tenant_id"),
        CheckConstraint(f"status IN ('{CONVERSATION_OPEN}', '{CONVERSATION_CLOSED}')", name="status"),
        # At most one open conversation per contact.
        Index(
            "uq_conversations_open_per_contact",
            "tenant",
            "contact",
            unique=True,
            postgresql_where=text(f"status = '{CONVERSATION_OPEN}'"),
            sqlite_where=text(f"status = '{CONVERSATION_OPEN}'"),
        ),
        Index("ix_conversations_tenant_contact_opened_at", "tenant", "contact", "opened_at"),
        Index("ix_conversations_tenant_opened_at", "tenant", "opened_at"),
        # The retention job's: a tenant's conversations closed before a cut-off.
        Index("ix_conversations_tenant_closed_at", "tenant", "closed_at"),
        # The archive job's queue: closed and not archived yet.
        Index(
            "ix_conversations_unarchived",
            "closed_at",
            postgresql_where=text(f"status = '{CONVERSATION_CLOSED}' AND archived_at IS NULL"),
            sqlite_where=text(f"status = '{CONVERSATION_CLOSED}' AND archived_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH))
    contact: Mapped[str] = mapped_column(String(WA_ID_LENGTH))
    opened_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16))
    # When the archive job copied the closed conversation's figures into the analytics file.
    archived_at: Mapped[datetime | None]


class Message(Base):
    """A WhatsApp message, inbound or outbound.

    A row whose `type` is NULL is a placeholder: a fact about the message (the turn that answered
    it, the wamid Meta gave it) arrived before the message itself, and recording the message
    fills it in. Inbound messages are identified by their wamid; outbound ones by the command id
    that made them, and get their wamid when the Graph API answers.
    """

    __tablename__ = "messages"
    __table_args__ = (
        _contact_key("messages"),
        _conversation_key("messages"),
        CheckConstraint(f"direction IN ('{INBOUND}', '{OUTBOUND}')", name="direction"),
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in STATUS_ORDER)})", name="status"),
        UniqueConstraint("tenant", "wamid", name="uq_messages_tenant_wamid"),
        UniqueConstraint("tenant", "command_id", name="uq_messages_tenant_command_id"),
        Index("ix_messages_tenant_contact_created_at", "tenant", "contact", "created_at"),
        Index("ix_messages_tenant_created_at", "tenant", "created_at"),
        Index("ix_messages_tenant_conversation_id", "tenant", "conversation_id"),
        Index("ix_messages_tenant_turn_id", "tenant", "turn_id"),
    )

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH))
    contact: Mapped[str] = mapped_column(String(WA_ID_LENGTH))
    conversation_id: Mapped[int] = mapped_column(BigInteger)
    direction: Mapped[str] = mapped_column(String(8))
    wamid: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    command_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    # Meta's type string ("text", "interactive", "template", ...); NULL for a placeholder.
    type: Mapped[str | None] = mapped_column(String(32))
    # A one-line rendering of the content: what a language model is shown as the conversation.
    text: Mapped[str | None] = mapped_column(Text)
    # The normalised content (the protobuf body as JSON).
    body: Mapped[dict[str, Any] | None]
    # Inbound: the message the customer replied to; outbound: the customer message quoted.
    quoted_wamid: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    # Inbound: the turn that answered it; outbound: the turn that produced it.
    turn_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    # Inbound: the ZF_INBOUND stream sequence of the message.
    stream_seq: Mapped[int | None] = mapped_column(BigInteger)
    # Inbound: Meta's timestamp; outbound: when the command was made.
    created_at: Mapped[datetime]
    # Inbound: when the gateway accepted it, on zapflow's clock to the microsecond (Meta's timestamp
    # has whole seconds): what orders a customer's message against zapflow's own in a transcript.
    received_at: Mapped[datetime | None]
    # Outbound delivery: the furthest status reached, and when each was reported.
    status: Mapped[str | None] = mapped_column(String(16))
    sent_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    read_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    error_code: Mapped[int | None] = mapped_column(Integer)
    error_title: Mapped[str | None] = mapped_column(Text)


class MessageStatus(Base):
    """Every delivery status Meta reported, by wamid, whether or not the message is known yet.

    The status columns of `messages` are computed from these rows, so statuses that arrive
    early, late, twice or out of order all end up in the same place.
    """

    __tablename__ = "message_statuses"
    __table_args__ = (
        _contact_key("message_statuses"),
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in STATUS_ORDER)})", name="status"),
        Index("ix_message_statuses_tenant_contact", "tenant", "contact"),
    )

    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH), primary_key=True)
    wamid: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    contact: Mapped[str] = mapped_column(String(WA_ID_LENGTH))
    # The earliest time Meta gave for this status.
    at: Mapped[datetime]
    error_code: Mapped[int | None] = mapped_column(Integer)
    error_title: Mapped[str | None] = mapped_column(Text)


class Turn(Base):
    """One burst of customer messages and the bot's answer to it."""

    __tablename__ = "turns"
    __table_args__ = (
        _contact_key("turns"),
        _conversation_key("turns"),
        Index("ix_turns_tenant_contact_created_at", "tenant", "contact", "created_at"),
        Index("ix_turns_tenant_created_at", "tenant", "created_at"),
    )

    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH), primary_key=True)
    turn_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    contact: Mapped[str] = mapped_column(String(WA_ID_LENGTH))
    conversation_id: Mapped[int] = mapped_column(BigInteger)
    responder: Mapped[str] = mapped_column(String(32))
    # rule | greeting | fallback | llm | faq | error_fallback | silent | ...
    outcome: Mapped[str] = mapped_column(String(32))
    rule: Mapped[str | None] = mapped_column(String(64))
    # From the debounce closing the turn to the answer being published.
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    message_count: Mapped[int] = mapped_column(Integer)
    # When the turn's first message reached zapflow.
    created_at: Mapped[datetime]
    answered_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]


class Handoff(Base):
    """A conversation with a person: queued, assigned to an agent, resolved (written by the handoff service).

    Not tied to the contacts and conversations tables by foreign keys: a handoff can be asked for
    before the recorder has written the contact. `conversation_id` is the conversation open when
    it was asked for, when the store knew it.
    """

    __tablename__ = "handoffs"
    __table_args__ = (
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in HANDOFF_STATES)})", name="status"),
        # The turn (or the agent's take) that asked for it: a redelivered request opens nothing twice.
        UniqueConstraint("tenant", "request_id", name="uq_handoffs_tenant_request_id"),
        # A contact is with at most one person at a time.
        Index(
            "uq_handoffs_active_per_contact",
            "tenant",
            "contact",
            unique=True,
            postgresql_where=text(f"status <> '{HANDOFF_RESOLVED}'"),
            sqlite_where=text(f"status <> '{HANDOFF_RESOLVED}'"),
        ),
        # The agents' queue: by state, the highest priority and the longest wait first.
        Index("ix_handoffs_tenant_status_priority_requested_at", "tenant", "status", "priority", "requested_at"),
        Index("ix_handoffs_tenant_contact_requested_at", "tenant", "contact", "requested_at"),
        Index("ix_handoffs_tenant_agent_status", "tenant", "agent", "status"),
        Index("ix_handoffs_status_last_activity_at", "status", "last_activity_at"),
        # Retention and the analytics archive: resolved handoffs by when they were resolved.
        Index("ix_handoffs_status_resolved_at", "status", "resolved_at"),
    )

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH))
    contact: Mapped[str] = mapped_column(String(WA_ID_LENGTH))
    conversation_id: Mapped[int | None] = mapped_column(BigInteger)
    # The owner key's value while the handoff is open: the asking turn's id, or "take:<uuid>".
    request_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    status: Mapped[str] = mapped_column(String(16))
    # customer_asked | rule | llm | faq_misses | responder_failures | agent_took
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(Integer)
    customer_name: Mapped[str | None] = mapped_column(Text)
    agent: Mapped[str | None] = mapped_column(String(EMAIL_LENGTH))
    labels: Mapped[list[str]] = mapped_column(Document)
    requested_at: Mapped[datetime]
    assigned_at: Mapped[datetime | None]
    first_reply_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    # agent | timeout | erased ...: how it ended; and who ended it.
    resolution: Mapped[str | None] = mapped_column(String(32))
    resolved_by: Mapped[str | None] = mapped_column(String(EMAIL_LENGTH))
    # Meta's time of the customer's latest message: their 24-hour window runs from it.
    last_customer_at: Mapped[datetime | None]
    # The latest message either way: the inactivity timeout counts from it.
    last_activity_at: Mapped[datetime]


class HandoffEvent(Base):
    """What happened in a handoff, in order: the timeline the inbox shows and the figures are computed from.

    Kinds: requested, forwarded (customer messages: their wamids), assigned, transferred, reply,
    template, note (a private note's text), labels, priority, requeued, timeout, resolved.
    """

    __tablename__ = "handoff_events"
    __table_args__ = (
        ForeignKeyConstraint(["handoff_id"], ["handoffs.id"], name="fk_handoff_events_handoff", ondelete="CASCADE"),
        Index("ix_handoff_events_handoff_id_id", "handoff_id", "id"),
        Index("ix_handoff_events_tenant_contact", "tenant", "contact"),
    )

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    handoff_id: Mapped[int] = mapped_column(BigInteger)
    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH))
    contact: Mapped[str] = mapped_column(String(WA_ID_LENGTH))
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(32))
    # The agent who acted, "bot" or "system".
    actor: Mapped[str] = mapped_column(String(EMAIL_LENGTH))
    # A note's text; what was sent lives in `messages`.
    text: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any]]


class Agent(Base):
    """A person who answers a tenant's customers in the inbox."""

    __tablename__ = "agents"

    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH), primary_key=True)
    email: Mapped[str] = mapped_column(String(EMAIL_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    # pwdlib's Argon2 hash (the parameters are in the hash).
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class AgentToken(Base):
    """A bearer token of the inbox's JSON API, acting as one agent; only its SHA-256 is kept."""

    __tablename__ = "agent_tokens"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant", "email"], ["agents.tenant", "agents.email"], name="fk_agent_tokens_agent", ondelete="CASCADE"
        ),
        UniqueConstraint("token_hash", name="uq_agent_tokens_token_hash"),
    )

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH))
    email: Mapped[str] = mapped_column(String(EMAIL_LENGTH))
    token_hash: Mapped[str] = mapped_column(String(HASH_LENGTH_SHA256))
    label: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]


# What an erasure erased: one customer of a tenant, or the whole tenant.
ERASURE_SCOPES = ("contact", "tenant")


class Erasure(Base):
    """A contact, or a whole tenant, erased: when, by what, and how much, never whom."""

    __tablename__ = "erasures"
    __table_args__ = (
        Index("ix_erasures_tenant_requested_at", "tenant", "requested_at"),
        CheckConstraint(f"scope IN ({', '.join(repr(scope) for scope in ERASURE_SCOPES)})", name="scope"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH))
    scope: Mapped[str] = mapped_column(String(16), server_default=ERASURE_SCOPES[0])
    # cli | admin-api
    requested_by: Mapped[str] = mapped_column(String(32))
    requested_at: Mapped[datetime]
    completed_at: Mapped[datetime]
    # What each store gave up: row, key and stream message counts.
    summary: Mapped[dict[str, Any]]


# --- knowledge (written by the embedding service) ---

HASH_LENGTH = HASH_LENGTH_SHA256
MODEL_LENGTH = 128
DOCUMENT_NAME_LENGTH = 255


class KnowledgeDocument(Base):
    """One source of a tenant's knowledge base: a file ingested, or the tenant spec's inline entries."""

    __tablename__ = "kb_documents"

    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(DOCUMENT_NAME_LENGTH), primary_key=True)
    # markdown | text | csv | pdf | inline
    kind: Mapped[str] = mapped_column(String(16))
    # cli (zapflow kb ingest) | spec (the tenant spec): a spec sync removes only its own documents.
    origin: Mapped[str] = mapped_column(String(16))
    # sha256 of what was read: re-ingesting an unchanged source changes nothing.
    content_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    chunk_count: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime]


class KnowledgeChunk(Base):
    """A retrievable passage of a document: a section under its headings, or a question and its answer."""

    __tablename__ = "kb_chunks"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant", "document"],
            ["kb_documents.tenant", "kb_documents.name"],
            name="fk_kb_chunks_document",
            ondelete="CASCADE",
        ),
        Index("ix_kb_chunks_tenant_content_hash", "tenant", "content_hash"),
    )

    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH), primary_key=True)
    document: Mapped[str] = mapped_column(String(DOCUMENT_NAME_LENGTH), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    language: Mapped[str] = mapped_column(String(8))
    # The heading path, or the FAQ question.
    title: Mapped[str] = mapped_column(Text)
    # The section's text, or the FAQ answer.
    body: Mapped[str] = mapped_column(Text)
    # sha256 of what is embedded (title and body): the key of its vector.
    content_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))


class KnowledgeVector(Base):
    """The embedding of one text by one model, kept so that no text is embedded twice per model."""

    __tablename__ = "kb_vectors"

    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH), primary_key=True)
    model: Mapped[str] = mapped_column(String(MODEL_LENGTH), primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(HASH_LENGTH), primary_key=True)
    # float32, little-endian.
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]


class TurnVector(Base):
    """A finished turn, embedded so that past conversations can be found by meaning.

    It holds the customer's words and the bot's answer, so retention and erasure reach it like
    the messages themselves (store/lifecycle.py).
    """

    __tablename__ = "turn_vectors"
    __table_args__ = (
        UniqueConstraint("tenant", "turn_id"),
        Index("ix_turn_vectors_tenant_contact", "tenant", "contact"),
        Index("ix_turn_vectors_tenant_at", "tenant", "at"),
    )

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH))
    turn_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    contact: Mapped[str] = mapped_column(String(WA_ID_LENGTH))
    # When the turn started.
    at: Mapped[datetime]
    language: Mapped[str] = mapped_column(String(8))
    customer_text: Mapped[str] = mapped_column(Text)
    answer_text: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(MODEL_LENGTH))
    # float32, little-endian; empty when the service runs without a model (lexical search only).
    vector: Mapped[bytes] = mapped_column(LargeBinary)


# --- campaigns (written by the scheduler) ---

# A campaign waits for its start, runs, waits when the messaging limit is reached, and ends: done
# (every recipient settled), cancelled, or failed (the template was refused: every send would be).
CAMPAIGN_SCHEDULED = "scheduled"
CAMPAIGN_RUNNING = "running"
CAMPAIGN_WAITING = "waiting"
CAMPAIGN_DONE = "done"
CAMPAIGN_CANCELLED = "cancelled"
CAMPAIGN_FAILED = "failed"
CAMPAIGN_STATES = (
    CAMPAIGN_SCHEDULED,
    CAMPAIGN_RUNNING,
    CAMPAIGN_WAITING,
    CAMPAIGN_DONE,
    CAMPAIGN_CANCELLED,
    CAMPAIGN_FAILED,
)
CAMPAIGN_ACTIVE = (CAMPAIGN_SCHEDULED, CAMPAIGN_RUNNING, CAMPAIGN_WAITING)
# A recipient is queued, then sending (its command is, or is about to be, on the bus), then it
# follows Meta's statuses; or it is skipped (opted out, ...) or failed, with the reason.
RECIPIENT_STATES = ("queued", "sending", "sent", "delivered", "read", "failed", "skipped")
OPT_OUT_SOURCES = ("keyword", "admin", "import")
CAMPAIGN_ID_LENGTH = 16
TEMPLATE_NAME_LENGTH = 512


def _states(states: tuple[str, ...]) -> str:
    return f"status IN ({', '.join(repr(state) for state in states)})"


class ContactPreference(Base):
    """What a customer asked about the business's campaigns: opted out (for good), or stopped marketing at Meta."""

    __tablename__ = "contact_preferences"
    __table_args__ = (
        CheckConstraint(
            f"opt_out_source IN ({', '.join(repr(source) for source in OPT_OUT_SOURCES)})", name="opt_out_source"
        ),
    )

    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH), primary_key=True)
    contact: Mapped[str] = mapped_column(String(WA_ID_LENGTH), primary_key=True)
    # Set: no campaign ever messages the customer (until an admin opts them back in).
    opted_out_at: Mapped[datetime | None]
    # keyword (they wrote STOP ...) | admin (zapflow contact opt-out, the admin API) | import
    opt_out_source: Mapped[str | None] = mapped_column(String(16))
    # Meta refused a marketing template with 131050; cleared when the customer writes.
    marketing_stopped_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class Campaign(Base):
    """One approved template sent to a list of a tenant's customers."""

    __tablename__ = "campaigns"
    __table_args__ = (
        CheckConstraint(_states(CAMPAIGN_STATES), name="status"),
        # Lets recipients reference (tenant, id): a row can only point at a campaign of its own tenant.
        UniqueConstraint("tenant", "id", name="uq_campaigns_tenant_id"),
        Index("ix_campaigns_tenant_created_at", "tenant", "created_at"),
        # The scheduler's safety net: active campaigns whose next slice is due.
        Index("ix_campaigns_status_next_at", "status", "next_at"),
    )

    id: Mapped[str] = mapped_column(String(CAMPAIGN_ID_LENGTH), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH))
    name: Mapped[str] = mapped_column(Text)
    template_name: Mapped[str] = mapped_column(String(TEMPLATE_NAME_LENGTH))
    template_language: Mapped[str] = mapped_column(String(16))
    # marketing | utility | authentication: marketing respects 131050's stop.
    template_category: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    # Why it waits or failed, in words shown to the tenant.
    reason: Mapped[str | None] = mapped_column(Text)
    start_at: Mapped[datetime]
    # When the runner wants to send its next slice (None: it has ended).
    next_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # cli | admin-api
    created_by: Mapped[str] = mapped_column(String(32))


class CampaignRecipient(Base):
    """One customer of a campaign: their template parameters and how far their message got."""

    __tablename__ = "campaign_recipients"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant", "campaign_id"],
            ["campaigns.tenant", "campaigns.id"],
            name="fk_campaign_recipients_campaign",
            ondelete="CASCADE",
        ),
        CheckConstraint(_states(RECIPIENT_STATES), name="status"),
        # The runner's queue and the progress counts.
        Index("ix_campaign_recipients_campaign_id_status", "campaign_id", "status"),
        # Delivery statuses find their recipient by wamid.
        Index("ix_campaign_recipients_tenant_wamid", "tenant", "wamid"),
        # Erasure, and a status waiting for its send result.
        Index("ix_campaign_recipients_tenant_contact", "tenant", "contact"),
    )

    campaign_id: Mapped[str] = mapped_column(String(CAMPAIGN_ID_LENGTH), primary_key=True)
    contact: Mapped[str] = mapped_column(String(WA_ID_LENGTH), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH))
    # The CSV's parameter columns: {"body.1": "Ana", "button.0": "promo-12"}.
    parameters: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16))
    # Why it was skipped or failed, or deferred (still queued with a not_before).
    reason: Mapped[str | None] = mapped_column(String(64))
    error_code: Mapped[int | None] = mapped_column(Integer)
    error_title: Mapped[str | None] = mapped_column(Text)
    # Each new try (after 131049) has a new command id.
    attempt: Mapped[int] = mapped_column(Integer)
    not_before: Mapped[datetime | None]
    command_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    wamid: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    updated_at: Mapped[datetime]
