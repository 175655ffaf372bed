"""Archives closed conversations, resolved handoffs and campaigns' figures from the relational store into DuckDB.

Sessions: the job is idempotent and all-or-nothing per batch of sessions:

1. it reads a batch of closed, unarchived conversations and their messages and turns from SQL;
2. in ONE DuckDB transaction it deletes whatever rows those sessions already have in the
   warehouse and inserts their rows again, then commits; a process killed before the commit
   leaves nothing (DuckDB's write-ahead log only replays committed transactions);
3. it then marks the conversations archived in SQL.

A job killed between 2 and 3 archives the same sessions again next time, and the delete-then-
insert leaves one row set, not two.

Handoffs have no archived mark in SQL: the warehouse keeps how far it has got instead (the latest
`resolved_at` copied, in `archive_progress`, committed with the rows). Each run reads the handoffs
resolved since then, less a margin for resolutions committed late, and replaces them by
(tenant, handoff id): one row per handoff however often it is read. A handoff is archived once
resolved, and only then (a resolved handoff no longer changes).

Campaigns change after they end: a delivered or read receipt (or a late failure) can come weeks
after the send. So each run copies again, replacing by (tenant, campaign id) in one transaction,
every campaign created in the last `CAMPAIGN_SETTLE` and every one still active whatever its age;
an older one stays as it was last copied. Its recipients are counted by state, and its failed and
skipped ones by reason, inside SQL: the copy is a few rows per campaign however long its list.

Only figures cross over: types, statuses, times, outcomes and pseudonyms, never a message's
text, a note, a phone number or an agent.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
from sqlalchemy import Row, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from zapflow.analytics import pseudonym
from zapflow.analytics.warehouse import CAMPAIGN_TABLES, SESSION_TABLES, open_warehouse, transaction
from zapflow.store.campaigns import FAILED, SKIPPED
from zapflow.store.lifecycle import DataSpecOf
from zapflow.store.models import (
    CAMPAIGN_ACTIVE,
    CONVERSATION_CLOSED,
    HANDOFF_RESOLVED,
    INBOUND,
    OUTBOUND,
    RECIPIENT_STATES,
    Campaign,
    CampaignRecipient,
    Conversation,
    Handoff,
    HandoffEvent,
    Message,
    Turn,
)
from zapflow.tenants.model import DataSpec

# Sessions per DuckDB transaction: big enough that a commit is rare, small enough that a batch
# of long conversations stays a few megabytes in memory.
BATCH_SESSIONS = 500
# Handoffs per DuckDB transaction: a row each, and no messages to carry.
BATCH_HANDOFFS = 2000
HANDOFF_OUTCOME = "handoff"
# A resolution's time is taken before its transaction commits (and by another host's clock): each
# run reads again this far behind the latest resolution it copied, so one committed late is not
# skipped. Those read twice are replaced, not duplicated.
LATE_RESOLUTION = timedelta(minutes=10)
HANDOFF_PROGRESS = "handoffs"
# The timeline events that give a handoff to an agent (HandoffEvent's kinds): the first one ends its wait.
TO_AN_AGENT = ("assigned", "transferred")
# How long after its creation a campaign is copied again: Meta keeps an undelivered message for up
# to 30 days, so a receipt can come that late; 5 days more cover a campaign that took days to send.
CAMPAIGN_SETTLE = timedelta(days=35)

MESSAGE_COLUMNS = (
    "tenant",
    "session_id",
    "message_id",
    "contact_key",
    "direction",
    "type",
    "turn_id",
    "created_at",
    "status",
    "sent_at",
    "delivered_at",
    "read_at",
    "failed_at",
    "error_code",
)
TURN_COLUMNS = (
    "tenant",
    "session_id",
    "turn_id",
    "contact_key",
    "responder",
    "outcome",
    "rule",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "message_count",
    "created_at",
    "answered_at",
)
SESSION_COLUMNS = (
    "tenant",
    "session_id",
    "contact_key",
    "opened_at",
    "closed_at",
    "messages_in",
    "messages_out",
    "turns",
    "handed_off",
    "archived_at",
)
HANDOFF_COLUMNS = (
    "tenant",
    "handoff_id",
    "session_id",
    "contact_key",
    "reason",
    "priority",
    "labels",
    "requested_at",
    "assigned_at",
    "first_reply_at",
    "resolved_at",
    "resolution",
    "wait_s",
    "first_reply_s",
    "resolve_s",
    "archived_at",
)
CAMPAIGN_COLUMNS = (
    "tenant",
    "campaign_id",
    "name",
    "template_name",
    "template_language",
    "template_category",
    "status",
    "reason",
    "created_at",
    "start_at",
    "updated_at",
    "recipients",
    *RECIPIENT_STATES,
    "archived_at",
)
OUTCOME_COLUMNS = ("tenant", "campaign_id", "status", "reason", "error_code", "count")


@dataclass
class ArchiveBatch:
    """The warehouse rows of a batch of sessions, column by column."""

    session_ids: dict[str, list[int]]  # by tenant
    sessions: dict[str, list[Any]]
    messages: dict[str, list[Any]]
    turns: dict[str, list[Any]]


def _default_terms(_tenant: str) -> DataSpec:
    return DataSpec()


class Archiver:
    """Copies closed conversations, resolved handoffs and campaigns' figures into the analytics file.

    `data_of` gives each tenant's analytics retention: a campaign older than it is not copied again
    once retention has deleted it.
    """

    def __init__(
        self, engine: AsyncEngine, warehouse: Path, pseudonym_secret: str, data_of: DataSpecOf = _default_terms
    ) -> None:
        self._engine = engine
        self._warehouse = warehouse
        self._secret = pseudonym_secret
        self._data_of = data_of

    async def archive_closed(self, now: datetime | None = None, batch_sessions: int = BATCH_SESSIONS) -> int:
        """Archive the closed conversations not archived yet, then handoffs and campaigns; returns how many sessions."""
        archived = 0
        while True:
            # One archival time per batch: the warehouse's archived_at and SQL's agree.
            at = now or datetime.now(UTC)
            batch = await self._read_batch(batch_sessions, at)
            if batch is None:
                break
            await asyncio.to_thread(self._write, batch)
            await self._mark_archived(batch.session_ids, at)
            archived += sum(len(ids) for ids in batch.session_ids.values())
        await self.archive_resolved_handoffs(now)
        await self.archive_campaigns(now)
        return archived

    async def archive_resolved_handoffs(self, now: datetime | None = None, batch_handoffs: int = BATCH_HANDOFFS) -> int:
        """Copy the handoffs resolved since the last run (and a margin before it); returns how many were copied."""
        archived_to = await asyncio.to_thread(self._handoffs_archived_to)
        since = archived_to.replace(tzinfo=UTC) - LATE_RESOLUTION if archived_to is not None else None
        after: tuple[datetime, int] | None = None
        copied = 0
        while True:
            at = now or datetime.now(UTC)
            handoffs = await self._read_resolved_handoffs(since, after, batch_handoffs)
            if not handoffs:
                return copied
            await asyncio.to_thread(self._write_handoffs, self._handoff_columns(handoffs, at))
            copied += len(handoffs)
            if len(handoffs) < batch_handoffs:
                return copied
            after = (handoffs[-1].resolved_at, handoffs[-1].id)

    async def archive_campaigns(self, now: datetime | None = None) -> int:
        """Copy again the campaigns created in the last CAMPAIGN_SETTLE and the active ones; returns how many."""
        at = now or datetime.now(UTC)
        campaigns, outcomes = await self._read_campaigns(at)
        if campaigns["campaign_id"]:
            await asyncio.to_thread(self._write_campaigns, campaigns, outcomes)
        return len(campaigns["campaign_id"])

    async def _read_campaigns(self, now: datetime) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
        """The campaigns to copy, with their recipients counted by state, and their outcomes, column by column."""
        unsettled = or_(Campaign.created_at >= now - CAMPAIGN_SETTLE, Campaign.status.in_(CAMPAIGN_ACTIVE))
        recipients_of_unsettled = CampaignRecipient.campaign_id.in_(select(Campaign.id).where(unsettled))
        async with self._engine.connect() as conn:
            found = (await conn.execute(select(Campaign).where(unsettled))).all()
            by_status = await conn.execute(
                select(CampaignRecipient.campaign_id, CampaignRecipient.status, func.count())
                .where(recipients_of_unsettled)
                .group_by(CampaignRecipient.campaign_id, CampaignRecipient.status)
            )
            by_reason = await conn.execute(
                select(
                    CampaignRecipient.campaign_id,
                    CampaignRecipient.status,
                    CampaignRecipient.reason,
                    CampaignRecipient.error_code,
                    func.count(),
                )
                .where(recipients_of_unsettled, CampaignRecipient.status.in_((FAILED, SKIPPED)))
                .group_by(
                    CampaignRecipient.campaign_id,
                    CampaignRecipient.status,
                    CampaignRecipient.reason,
                    CampaignRecipient.error_code,
                )
            )
        # Once past its tenant's retention a campaign is deleted from the file: not to come back.
        tenant_of = {
            row.id: row.tenant
            for row in found
            if row.created_at >= now - timedelta(days=self._data_of(row.tenant).analytics_retention_days)
        }
        counts: dict[str, dict[str, int]] = {
            campaign_id: dict.fromkeys(RECIPIENT_STATES, 0) for campaign_id in tenant_of
        }
        for campaign_id, status, count in by_status:
            # Not a campaign to copy: past its retention, or created after the first read (the next run's).
            if campaign_id in counts:
                counts[campaign_id][status] = int(count)
        campaigns: dict[str, list[Any]] = {name: [] for name in CAMPAIGN_COLUMNS}
        for row in found:
            if row.id in tenant_of:
                _append(
                    campaigns,
                    tenant=row.tenant,
                    campaign_id=row.id,
                    name=row.name,
                    template_name=row.template_name,
                    template_language=row.template_language,
                    template_category=row.template_category,
                    status=row.status,
                    reason=row.reason,
                    created_at=_naive(row.created_at),
                    start_at=_naive(row.start_at),
                    updated_at=_naive(row.updated_at),
                    recipients=sum(counts[row.id].values()),
                    **counts[row.id],
                    archived_at=_naive(now),
                )
        outcomes: dict[str, list[Any]] = {name: [] for name in OUTCOME_COLUMNS}
        for campaign_id, status, reason, error_code, count in by_reason:
            if campaign_id in tenant_of:
                _append(
                    outcomes,
                    tenant=tenant_of[campaign_id],
                    campaign_id=campaign_id,
                    status=status,
                    reason=reason,
                    error_code=error_code,
                    count=int(count),
                )
        return campaigns, outcomes

    def _write_campaigns(self, campaigns: dict[str, list[Any]], outcomes: dict[str, list[Any]]) -> None:
        """Replace the campaigns and their outcomes in the warehouse, in one transaction."""
        by_tenant: dict[str, list[str]] = defaultdict(list)
        for tenant, campaign_id in zip(campaigns["tenant"], campaigns["campaign_id"], strict=True):
            by_tenant[tenant].append(campaign_id)
        with open_warehouse(self._warehouse) as warehouse, transaction(warehouse):
            for tenant, ids in by_tenant.items():
                for table in CAMPAIGN_TABLES:
                    warehouse.execute(
                        f"DELETE FROM {table} WHERE tenant = ? AND list_contains(?, campaign_id)",  # noqa: S608
                        [tenant, ids],
                    )
            _insert_columns(warehouse, "campaigns", campaigns)
            _insert_columns(warehouse, "campaign_outcomes", outcomes)

    async def _read_batch(self, limit: int, now: datetime) -> ArchiveBatch | None:
        async with self._engine.connect() as conn:
            conversations = (
                await conn.execute(
                    select(
                        Conversation.id,
                        Conversation.tenant,
                        Conversation.contact,
                        Conversation.opened_at,
                        Conversation.closed_at,
                    )
                    .where(Conversation.status == CONVERSATION_CLOSED, Conversation.archived_at.is_(None))
                    .order_by(Conversation.closed_at, Conversation.id)
                    .limit(limit)
                )
            ).all()
            if not conversations:
                return None
            by_tenant: dict[str, list[int]] = defaultdict(list)
            for row in conversations:
                by_tenant[row.tenant].append(row.id)
            messages = await _rows_of(conn, Message, by_tenant, Message.type.is_not(None))
            turns = await _rows_of(conn, Turn, by_tenant)
            handoffs = await _handed_off(conn, conversations)
        contact_of = {
            (row.tenant, row.id): pseudonym.contact_pseudonym(self._secret, row.tenant, row.contact)
            for row in conversations
        }
        batch = ArchiveBatch(
            session_ids=dict(by_tenant),
            sessions={name: [] for name in SESSION_COLUMNS},
            messages={name: [] for name in MESSAGE_COLUMNS},
            turns={name: [] for name in TURN_COLUMNS},
        )
        counts: dict[tuple[str, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for message in messages:
            session = (message.tenant, message.conversation_id)
            counts[session][message.direction] += 1
            _append(
                batch.messages,
                tenant=message.tenant,
                session_id=message.conversation_id,
                message_id=message.id,
                contact_key=contact_of[session],
                direction=message.direction,
                type=message.type,
                turn_id=message.turn_id,
                created_at=_naive(message.created_at),
                status=message.status,
                sent_at=_naive(message.sent_at),
                delivered_at=_naive(message.delivered_at),
                read_at=_naive(message.read_at),
                failed_at=_naive(message.failed_at),
                error_code=message.error_code,
            )
        for turn in turns:
            session = (turn.tenant, turn.conversation_id)
            counts[session]["turns"] += 1
            if turn.outcome == HANDOFF_OUTCOME:
                handoffs.add(session)
            _append(
                batch.turns,
                tenant=turn.tenant,
                session_id=turn.conversation_id,
                turn_id=turn.turn_id,
                contact_key=contact_of[session],
                responder=turn.responder,
                outcome=turn.outcome,
                rule=turn.rule,
                latency_ms=turn.latency_ms,
                prompt_tokens=turn.prompt_tokens,
                completion_tokens=turn.completion_tokens,
                message_count=turn.message_count,
                created_at=_naive(turn.created_at),
                answered_at=_naive(turn.answered_at),
            )
        for row in conversations:
            session = (row.tenant, row.id)
            _append(
                batch.sessions,
                tenant=row.tenant,
                session_id=row.id,
                contact_key=contact_of[session],
                opened_at=_naive(row.opened_at),
                closed_at=_naive(row.closed_at),
                messages_in=counts[session][INBOUND],
                messages_out=counts[session][OUTBOUND],
                turns=counts[session]["turns"],
                handed_off=session in handoffs,
                archived_at=_naive(now),
            )
        return batch

    def _write(self, batch: ArchiveBatch) -> None:
        """Replace the batch's sessions in the warehouse, in one transaction."""
        with open_warehouse(self._warehouse) as warehouse, transaction(warehouse):
            for tenant, ids in batch.session_ids.items():
                for table in SESSION_TABLES:
                    warehouse.execute(
                        f"DELETE FROM {table} WHERE tenant = ? AND list_contains(?, session_id)",  # noqa: S608
                        [tenant, ids],
                    )
            _insert_columns(warehouse, "sessions", batch.sessions)
            _insert_columns(warehouse, "messages", batch.messages)
            _insert_columns(warehouse, "turns", batch.turns)

    async def _mark_archived(self, session_ids: dict[str, list[int]], now: datetime) -> None:
        async with self._engine.begin() as conn:
            for tenant, ids in session_ids.items():
                await conn.execute(
                    update(Conversation)
                    .where(Conversation.tenant == tenant, Conversation.id.in_(ids))
                    .values(archived_at=now)
                )

    async def _read_resolved_handoffs(
        self, since: datetime | None, after: tuple[datetime, int] | None, limit: int
    ) -> list[Row[Any]]:
        """Resolved handoffs in order of resolution: from `since`, then past `after` (the last one of a batch)."""
        first_assigned = (
            select(func.min(HandoffEvent.at))
            .where(HandoffEvent.handoff_id == Handoff.id, HandoffEvent.kind.in_(TO_AN_AGENT))
            .scalar_subquery()
        )
        # Without the store's conversation id: the contact's conversation open when it was asked for.
        during = (
            select(Conversation.id)
            .where(
                Conversation.tenant == Handoff.tenant,
                Conversation.contact == Handoff.contact,
                Conversation.opened_at <= Handoff.requested_at,
                or_(Conversation.closed_at.is_(None), Conversation.closed_at >= Handoff.requested_at),
            )
            .order_by(Conversation.opened_at.desc())
            .limit(1)
            .scalar_subquery()
        )
        query = select(
            Handoff.id,
            Handoff.tenant,
            Handoff.contact,
            func.coalesce(Handoff.conversation_id, during).label("session_id"),
            Handoff.reason,
            Handoff.priority,
            Handoff.labels,
            Handoff.requested_at,
            func.coalesce(first_assigned, Handoff.assigned_at).label("assigned_at"),
            Handoff.first_reply_at,
            Handoff.resolved_at,
            Handoff.resolution,
        ).where(Handoff.status == HANDOFF_RESOLVED, Handoff.resolved_at.is_not(None))
        if after is not None:
            last_at, last_id = after
            query = query.where(
                or_(Handoff.resolved_at > last_at, and_(Handoff.resolved_at == last_at, Handoff.id > last_id))
            )
        elif since is not None:
            query = query.where(Handoff.resolved_at >= since)
        async with self._engine.connect() as conn:
            return list(await conn.execute(query.order_by(Handoff.resolved_at, Handoff.id).limit(limit)))

    def _handoff_columns(self, handoffs: list[Row[Any]], now: datetime) -> dict[str, list[Any]]:
        columns: dict[str, list[Any]] = {name: [] for name in HANDOFF_COLUMNS}
        for handoff in handoffs:
            _append(
                columns,
                tenant=handoff.tenant,
                handoff_id=handoff.id,
                session_id=handoff.session_id,
                contact_key=pseudonym.contact_pseudonym(self._secret, handoff.tenant, handoff.contact),
                reason=handoff.reason,
                priority=handoff.priority,
                labels=list(handoff.labels),
                requested_at=_naive(handoff.requested_at),
                assigned_at=_naive(handoff.assigned_at),
                first_reply_at=_naive(handoff.first_reply_at),
                resolved_at=_naive(handoff.resolved_at),
                resolution=handoff.resolution,
                wait_s=_seconds(handoff.requested_at, handoff.assigned_at),
                first_reply_s=_seconds(handoff.requested_at, handoff.first_reply_at),
                resolve_s=_seconds(handoff.requested_at, handoff.resolved_at),
                archived_at=_naive(now),
            )
        return columns

    def _handoffs_archived_to(self) -> datetime | None:
        """The latest resolution copied (naive UTC); None before the first."""
        if not self._warehouse.exists():
            return None
        with open_warehouse(self._warehouse) as warehouse:
            row = warehouse.execute(
                "SELECT archived_to FROM archive_progress WHERE source = ?", [HANDOFF_PROGRESS]
            ).fetchone()
        return row[0] if row else None

    def _write_handoffs(self, columns: dict[str, list[Any]]) -> None:
        """Replace the handoffs in the warehouse and move the progress on, in one transaction."""
        by_tenant: dict[str, list[int]] = defaultdict(list)
        for tenant, handoff_id in zip(columns["tenant"], columns["handoff_id"], strict=True):
            by_tenant[tenant].append(handoff_id)
        with open_warehouse(self._warehouse) as warehouse, transaction(warehouse):
            for tenant, ids in by_tenant.items():
                warehouse.execute(
                    "DELETE FROM handoffs WHERE tenant = ? AND list_contains(?, handoff_id)", [tenant, ids]
                )
            _insert_columns(warehouse, "handoffs", columns)
            # Never backwards: a run's first batch starts behind the progress, by the margin.
            warehouse.execute(
                "INSERT INTO archive_progress VALUES (?, ?) ON CONFLICT (source) DO UPDATE "
                "SET archived_to = greatest(archived_to, excluded.archived_to)",
                [HANDOFF_PROGRESS, max(columns["resolved_at"])],
            )


async def _handed_off(conn: AsyncConnection, conversations: Sequence[Any]) -> set[tuple[str, int]]:
    """The sessions a handoff of their contact was asked for in (by the store's conversation id, or by time).

    The conversation id is NULL when the handoff came before the store knew the conversation.
    """
    contacts: dict[str, set[str]] = defaultdict(set)
    for row in conversations:
        contacts[row.tenant].add(row.contact)
    requests: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for tenant, of_tenant in contacts.items():
        for handoff in await conn.execute(
            select(Handoff.tenant, Handoff.contact, Handoff.conversation_id, Handoff.requested_at).where(
                Handoff.tenant == tenant, Handoff.contact.in_(sorted(of_tenant))
            )
        ):
            requests[(handoff.tenant, handoff.contact)].append(handoff)
    return {
        (row.tenant, row.id)
        for row in conversations
        if any(
            handoff.conversation_id == row.id or row.opened_at <= handoff.requested_at <= row.closed_at
            for handoff in requests[(row.tenant, row.contact)]
        )
    }


async def _rows_of(
    conn: AsyncConnection, model: type[Message] | type[Turn], by_tenant: dict[str, list[int]], *where: Any
) -> list[Any]:
    rows: list[Any] = []
    for tenant, ids in by_tenant.items():
        result = await conn.execute(select(model).where(model.tenant == tenant, model.conversation_id.in_(ids), *where))
        rows.extend(result.all())
    return rows


def _append(columns: dict[str, list[Any]], **values: Any) -> None:
    for name, value in values.items():
        columns[name].append(value)


def _insert_columns(warehouse: duckdb.DuckDBPyConnection, table: str, columns: Mapping[str, Sequence[Any]]) -> None:
    """Insert column lists in one statement: unnest zips them into rows inside DuckDB.

    One statement per table instead of one per row: executemany is a round trip per row.
    """
    names = list(columns)
    if not columns[names[0]]:
        return
    selected = ", ".join(f"unnest(${index + 1})" for index in range(len(names)))
    warehouse.execute(
        f"INSERT INTO {table} ({', '.join(names)}) SELECT {selected}",
        [list(columns[name]) for name in names],
    )


def _seconds(start: datetime, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if end is not None else None


def _naive(value: datetime | None) -> datetime | None:
    """The warehouse keeps UTC without a zone (TIMESTAMP), so no session time zone can shift it."""
    return value.astimezone(UTC).replace(tzinfo=None) if value is not None else None
