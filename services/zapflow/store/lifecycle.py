"""The end of a conversation's life: closing idle sessions, retention, and erasing a contact or a tenant.

Each change about one contact runs in a transaction that first locks the contact's row (on
PostgreSQL; SQLite has one writer at a time), the lock every recording transaction takes first
(see repository.py): a message recorded while its conversation is being closed or deleted
waits, then sees the result, instead of landing in a conversation that is going away.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import ColumnElement, Select, Table, delete, exists, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from zapflow.store.campaigns import delete_ended_campaigns, erase_contact_campaign_rows
from zapflow.store.models import (
    CONVERSATION_CLOSED,
    CONVERSATION_OPEN,
    HANDOFF_RESOLVED,
    Agent,
    AgentToken,
    Base,
    Campaign,
    CampaignRecipient,
    Contact,
    ContactPreference,
    Conversation,
    Handoff,
    HandoffEvent,
    KnowledgeChunk,
    KnowledgeDocument,
    KnowledgeVector,
    Message,
    MessageStatus,
    Turn,
    TurnVector,
)
from zapflow.tenants.model import DataSpec

# Conversations deleted per transaction by the retention job: short transactions, so recording
# never waits long behind it.
RETENTION_BATCH = 200

DataSpecOf = Callable[[str], DataSpec]

# Rows deleted per transaction when a whole tenant is erased: recording for the other tenants
# (SQLite has one writer at a time) waits for one batch at most, never for the whole tenant.
TENANT_ERASURE_BATCH = 2_000
# Every table with a tenant's rows, each before the tables its rows point at: what erasing a
# tenant empties. Not `erasures`: its rows name no one, and they are the proof that the tenant's
# customers were erased when they asked.
TENANT_TABLES: tuple[type[Base], ...] = (
    HandoffEvent,
    Handoff,
    TurnVector,
    MessageStatus,
    Message,
    Turn,
    Conversation,
    CampaignRecipient,
    Campaign,
    ContactPreference,
    Contact,
    AgentToken,
    Agent,
    KnowledgeChunk,
    KnowledgeDocument,
    KnowledgeVector,
)


@dataclass
class Deleted:
    """Rows deleted, by table."""

    rows: dict[str, int] = field(default_factory=dict)
    # Rows of turn_vectors deleted: the embedding replicas are told to drop them from memory.
    turn_vector_ids: list[int] = field(default_factory=list)

    def add(self, table: str, count: int) -> None:
        self.rows[table] = self.rows.get(table, 0) + max(count, 0)

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def _last_activity() -> Select[datetime]:
    """The time of a conversation's latest message, either way (correlated to `conversations`)."""
    return select(func.max(Message.created_at)).where(
        Message.tenant == Conversation.tenant, Message.conversation_id == Conversation.id
    )


async def close_idle_conversations(engine: AsyncEngine, data_of: DataSpecOf, now: datetime) -> int:
    """Close every open conversation idle for longer than its tenant's `sessionIdleMinutes`.

    The closing time is the last message's, so a scheduler that was down does not make sessions
    look longer than they were. A conversation with a human on it stays open (humans win).
    """
    last_activity = func.coalesce(_last_activity().scalar_subquery(), Conversation.opened_at)
    closed = 0
    async with engine.connect() as conn:
        tenants = list(
            await conn.scalars(select(Conversation.tenant).where(Conversation.status == CONVERSATION_OPEN).distinct())
        )
    for tenant in tenants:
        cutoff = now - timedelta(minutes=data_of(tenant).session_idle_minutes)
        async with engine.connect() as conn:
            idle = (
                await conn.execute(
                    select(Conversation.id, Conversation.contact).where(
                        Conversation.tenant == tenant,
                        Conversation.status == CONVERSATION_OPEN,
                        last_activity < cutoff,
                    )
                )
            ).all()
        for conversation_id, contact in idle:
            async with engine.begin() as conn:
                await _lock_contact(conn, tenant, contact)
                # Checked again under the lock: a message may have come since the first look.
                result = await conn.execute(
                    update(Conversation)
                    .where(
                        Conversation.id == conversation_id,
                        Conversation.status == CONVERSATION_OPEN,
                        last_activity < cutoff,
                        ~exists().where(
                            Handoff.tenant == tenant, Handoff.contact == contact, Handoff.status != HANDOFF_RESOLVED
                        ),
                    )
                    .values(status=CONVERSATION_CLOSED, closed_at=last_activity)
                )
                closed += result.rowcount
    return closed


async def delete_expired_conversations(engine: AsyncEngine, data_of: DataSpecOf, now: datetime) -> Deleted:
    """Delete archived conversations closed longer ago than their tenant's `retentionDays`.

    Unarchived ones wait for the archive job, so a report never loses a session to retention.
    Handoffs resolved longer ago go too, with their timelines; an open one stays however old; and
    campaigns that ended longer ago, with their recipients (opt-outs stay: they are not a record of
    a conversation but what the customer asked for).
    Contacts left with nothing are deleted too.
    """
    deleted = Deleted()
    async with engine.connect() as conn:
        tenants = set(await conn.scalars(select(Contact.tenant).distinct()))
        tenants |= set(await conn.scalars(select(TurnVector.tenant).distinct()))
        tenants |= set(await conn.scalars(select(Handoff.tenant).distinct()))
        tenants |= set(await conn.scalars(select(Campaign.tenant).distinct()))
    for tenant in sorted(tenants):
        cutoff = now - timedelta(days=data_of(tenant).retention_days)
        async with engine.begin() as conn:
            # A turn's words, embedded for search, expire with the conversations they came from.
            await _delete_turn_vectors(conn, (TurnVector.tenant == tenant) & (TurnVector.at < cutoff), deleted)
            # On their own clock: a handoff need not belong to a conversation. The archive job
            # copies a handoff as soon as it is resolved, long before this.
            await _delete_handoffs(
                conn,
                (Handoff.tenant == tenant) & (Handoff.status == HANDOFF_RESOLVED) & (Handoff.resolved_at < cutoff),
                deleted,
            )
            # Campaigns that ended longer ago, with their recipients (phone numbers and parameters).
            for table, count in (await delete_ended_campaigns(conn, tenant, cutoff)).items():
                deleted.add(table, count)
        while True:
            async with engine.begin() as conn:
                expired = list(
                    await conn.scalars(
                        select(Conversation.id)
                        .where(
                            Conversation.tenant == tenant,
                            Conversation.status == CONVERSATION_CLOSED,
                            Conversation.archived_at.is_not(None),
                            Conversation.closed_at < cutoff,
                        )
                        .limit(RETENTION_BATCH)
                    )
                )
                if not expired:
                    break
                await _delete_conversations(conn, tenant, expired, deleted)
        async with engine.begin() as conn:
            # Statuses whose message was never recorded (or is gone) expire on their own time.
            orphan_statuses = await conn.execute(
                delete(MessageStatus).where(
                    MessageStatus.tenant == tenant,
                    MessageStatus.at < cutoff,
                    ~exists().where(Message.tenant == tenant, Message.wamid == MessageStatus.wamid),
                )
            )
            deleted.add("message_statuses", orphan_statuses.rowcount)
            forgotten = await conn.execute(
                delete(Contact).where(
                    Contact.tenant == tenant,
                    func.coalesce(Contact.last_seen_at, Contact.first_seen_at) < cutoff,
                    ~exists().where(Conversation.tenant == tenant, Conversation.contact == Contact.wa_id),
                    ~exists().where(MessageStatus.tenant == tenant, MessageStatus.contact == Contact.wa_id),
                )
            )
            deleted.add("contacts", forgotten.rowcount)
    return deleted


async def erase_contact(engine: AsyncEngine, tenant: str, contact: str) -> Deleted:
    """Delete everything the relational store has about one contact of a tenant."""
    deleted = Deleted()
    async with engine.begin() as conn:
        await _lock_contact(conn, tenant, contact)
        conversations = list(
            await conn.scalars(
                select(Conversation.id).where(Conversation.tenant == tenant, Conversation.contact == contact)
            )
        )
        await _delete_conversations(conn, tenant, conversations, deleted)
        # Rows of the contact outside any of its conversations: statuses of unknown messages.
        statuses = await conn.execute(
            delete(MessageStatus).where(MessageStatus.tenant == tenant, MessageStatus.contact == contact)
        )
        deleted.add("message_statuses", statuses.rowcount)
        await _delete_turn_vectors(conn, (TurnVector.tenant == tenant) & (TurnVector.contact == contact), deleted)
        # Open ones too: their notes and timelines are about the customer.
        await _delete_handoffs(conn, (Handoff.tenant == tenant) & (Handoff.contact == contact), deleted)
        for table, count in (await erase_contact_campaign_rows(conn, tenant, contact)).items():
            deleted.add(table, count)
        contacts = await conn.execute(delete(Contact).where(Contact.tenant == tenant, Contact.wa_id == contact))
        deleted.add("contacts", contacts.rowcount)
    return deleted


async def erase_tenant(engine: AsyncEngine, tenant: str) -> Deleted:
    """Delete every row of a tenant, table by table in `TENANT_TABLES` order, a batch per transaction.

    Idempotent: a run stopped halfway leaves whole batches deleted, and the next one goes on.
    """
    deleted = Deleted()
    for table in (cast(Table, model.__table__) for model in TENANT_TABLES):
        primary_key = list(table.primary_key.columns)
        batch = select(*primary_key).where(table.c.tenant == tenant).limit(TENANT_ERASURE_BATCH)
        key = tuple_(*primary_key)
        while True:
            async with engine.begin() as conn:
                count = (await conn.execute(delete(table).where(key.in_(batch)))).rowcount
            deleted.add(table.name, count)
            if count < TENANT_ERASURE_BATCH:
                break
    return deleted


async def _delete_conversations(conn: AsyncConnection, tenant: str, ids: list[int], deleted: Deleted) -> None:
    if not ids:
        return
    wamids = select(Message.wamid).where(
        Message.tenant == tenant, Message.conversation_id.in_(ids), Message.wamid.is_not(None)
    )
    statuses = await conn.execute(
        delete(MessageStatus).where(MessageStatus.tenant == tenant, MessageStatus.wamid.in_(wamids))
    )
    deleted.add("message_statuses", statuses.rowcount)
    for model in (Message, Turn):
        result = await conn.execute(delete(model).where(model.tenant == tenant, model.conversation_id.in_(ids)))
        deleted.add(model.__tablename__, result.rowcount)
    result = await conn.execute(delete(Conversation).where(Conversation.tenant == tenant, Conversation.id.in_(ids)))
    deleted.add(Conversation.__tablename__, result.rowcount)


async def _delete_handoffs(conn: AsyncConnection, which: ColumnElement[bool], deleted: Deleted) -> None:
    """Handoffs and their timelines (notes included), the timelines first and explicitly, so they are counted."""
    ids = select(Handoff.id).where(which)
    events = await conn.execute(delete(HandoffEvent).where(HandoffEvent.handoff_id.in_(ids)))
    deleted.add(HandoffEvent.__tablename__, events.rowcount)
    handoffs = await conn.execute(delete(Handoff).where(which))
    deleted.add(Handoff.__tablename__, handoffs.rowcount)


async def _delete_turn_vectors(conn: AsyncConnection, which: ColumnElement[bool], deleted: Deleted) -> None:
    ids = list(await conn.scalars(select(TurnVector.id).where(which)))
    if ids:
        result = await conn.execute(delete(TurnVector).where(TurnVector.id.in_(ids)))
        deleted.add(TurnVector.__tablename__, result.rowcount)
        deleted.turn_vector_ids.extend(ids)


async def _lock_contact(conn: AsyncConnection, tenant: str, contact: str) -> None:
    """Take the contact's row lock (PostgreSQL); SQLite serialises writers by itself."""
    if conn.dialect.name == "postgresql":
        await conn.execute(
            select(Contact.wa_id).where(Contact.tenant == tenant, Contact.wa_id == contact).with_for_update()
        )
