"""Archives closed conversations from the relational store into the analytics file.

The job is idempotent and all-or-nothing per batch of sessions:

1. it reads a batch of closed, unarchived conversations and their messages and turns from SQL;
2. in ONE DuckDB transaction it deletes whatever rows those sessions already have in the
   warehouse and inserts their rows again, then commits; a process killed before the commit
   leaves nothing (DuckDB's write-ahead log only replays committed transactions);
3. it then marks the conversations archived in SQL.

A job killed between 2 and 3 archives the same sessions again next time, and the delete-then-
insert leaves one row set, not two. Only figures cross over: types, statuses, times, outcomes
and pseudonyms, never a message's text or a phone number.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from zapflow.analytics import pseudonym
from zapflow.analytics.warehouse import TABLES, open_warehouse, transaction
from zapflow.store.models import CONVERSATION_CLOSED, INBOUND, OUTBOUND, Conversation, Handoff, Message, Turn

# Sessions per DuckDB transaction: big enough that a commit is rare, small enough that a batch
# of long conversations stays a few megabytes in memory.
BATCH_SESSIONS = 500
HANDOFF_OUTCOME = "handoff"

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


@dataclass
class ArchiveBatch:
    """The warehouse rows of a batch of sessions, column by column."""

    session_ids: dict[str, list[int]]  # by tenant
    sessions: dict[str, list[Any]]
    messages: dict[str, list[Any]]
    turns: dict[str, list[Any]]


class Archiver:
    """Copies closed conversations into the analytics file."""

    def __init__(self, engine: AsyncEngine, warehouse: Path, pseudonym_secret: str) -> None:
        self._engine = engine
        self._warehouse = warehouse
        self._secret = pseudonym_secret

    async def archive_closed(self, now: datetime | None = None, batch_sessions: int = BATCH_SESSIONS) -> int:
        """Archive every closed conversation not archived yet; returns how many were archived."""
        archived = 0
        while True:
            # One archival time per batch: the warehouse's archived_at and SQL's agree.
            at = now or datetime.now(UTC)
            batch = await self._read_batch(batch_sessions, at)
            if batch is None:
                return archived
            await asyncio.to_thread(self._write, batch)
            await self._mark_archived(batch.session_ids, at)
            archived += sum(len(ids) for ids in batch.session_ids.values())

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
            handoffs = {
                (row.tenant, row.conversation_id)
                for tenant, ids in by_tenant.items()
                for row in await conn.execute(
                    select(Handoff.tenant, Handoff.conversation_id)
                    .where(Handoff.tenant == tenant, Handoff.conversation_id.in_(ids))
                    .group_by(Handoff.tenant, Handoff.conversation_id)
                )
            }
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
                for table in TABLES:
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


def _naive(value: datetime | None) -> datetime | None:
    """The warehouse keeps UTC without a zone (TIMESTAMP), so no session time zone can shift it."""
    return value.astimezone(UTC).replace(tzinfo=None) if value is not None else None
