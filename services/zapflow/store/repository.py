"""Writes and reads of the relational store, the same on PostgreSQL and SQLite.

Every event zapflow records arrives at least once and in any order: inbound messages, the
commands the bot sends, what the Graph API made of them, Meta's delivery statuses and turn
events travel on different streams to different consumers. So every write here is

* idempotent: each fact has a unique key in its tenant (the wamid, the command id, the turn id,
  wamid + status) and is written with INSERT ... ON CONFLICT, so a redelivery changes nothing;
* order-free: a fact that arrives before the row it belongs to is kept and joined to it later.
  Statuses go to `message_statuses`, and a message's status columns are recomputed from there
  whenever the message or a status arrives. A turn that arrives before its messages, or a
  Graph API result before its command, leaves a placeholder message row (type NULL) that
  recording the message fills in.

Every write starts by upserting the contact's row. On PostgreSQL that takes the row's lock, so the
writes about one contact run one at a time and each sees what the previous one committed (a status
and the result that gives its message the wamid cannot miss each other); on SQLite, writers are
serialised anyway. Contacts do not wait on each other.

Each write is a method on an open connection, run either in a transaction of its own (the
`record_*` methods) or with many others in one (`record_batch`, which the recorder uses to save
a commit per event). A batch holds several contacts' locks at once, so it takes them in
one global order, by (tenant, contact): two batches touching the same contacts wait for each
other instead of deadlocking.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeAlias

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message as ProtoMessage
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import Select, SQLColumnExpression, and_, bindparam, case, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import InstrumentedAttribute

from zapflow.platform.logging import get_logger
from zapflow.store.campaigns import OPT_OUT_ACTION, record_opt_out
from zapflow.store.errors import StoreError
from zapflow.store.models import (
    CONVERSATION_CLOSED,
    CONVERSATION_OPEN,
    INBOUND,
    OUTBOUND,
    STATUS_ORDER,
    Base,
    Contact,
    ContactPreference,
    Conversation,
    Message,
    MessageStatus,
    Turn,
)
from zapflow.v1 import inbound_pb2, outbound_pb2, turn_pb2
from zapflow.whatsapp.messages import CHAT_EVENT_TYPES, HistoryEntry, describe

log = get_logger(__name__)

Upsert: TypeAlias = postgresql.Insert | sqlite.Insert
# Both dialects spell INSERT ... ON CONFLICT alike; only the construct differs.
UPSERTS: dict[str, Callable[[type[Base]], Upsert]] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}

FAILED = "failed"
# Meta reports "played" when a voice note was listened to: for delivery, that is "read".
STATUS_ALIASES = {"played": "read"}
# Graph API results (OutboundResult.result) that mean Meta refused the message for good.
REFUSED_RESULTS = frozenset({"failed", "window_closed", "marketing_stopped", "marketing_limited", "template_rejected"})


class Recorded(StrEnum):
    """What a write did."""

    NEW = "new"  # the fact was stored (or made an earlier one more precise)
    DUPLICATE = "duplicate"  # already known: a redelivery, nothing changed
    IGNORED = "ignored"  # not something the store keeps, e.g. a mark-read command


@dataclass(frozen=True)
class SequencedInbound:
    """An inbound message with its ZF_INBOUND stream sequence, as `record_batch` takes it."""

    message: inbound_pb2.InboundMessage
    seq: int


Event: TypeAlias = (
    SequencedInbound
    | outbound_pb2.OutboundCommand
    | outbound_pb2.OutboundResult
    | inbound_pb2.StatusUpdate
    | turn_pb2.Turn
)


class _EventFailed(Exception):
    """Writing one event of a batch failed (the cause), as opposed to opening or committing it."""


# The columns an inbound / outbound message row takes from its event (besides its keys).
INBOUND_CONTENT = ("direction", "type", "text", "body", "quoted_wamid", "stream_seq", "created_at", "received_at")
OUTBOUND_CONTENT = ("direction", "type", "text", "body", "quoted_wamid", "turn_id", "created_at")


class _Statements:
    """Every statement of the write path, built once per store and executed with new values.

    SQLAlchemy spends several times more CPU building an upsert than executing it: built per
    event, they cost the recorder more than its transactions did (docs/benchmark.md). Inserts take
    their columns from the values they are executed with; UPDATEs name their WHERE values
    `where_*`, as a value named like a column would be taken for a column to SET.
    """

    def __init__(self, upsert: Callable[[type[Base]], Upsert]) -> None:
        contact = upsert(Contact)
        new = contact.excluded
        name_is_newer = and_(
            new.profile_name.is_not(None),
            or_(
                Contact.last_customer_message_at.is_(None),
                new.last_customer_message_at >= Contact.last_customer_message_at,
            ),
        )
        # DO UPDATE (never DO NOTHING) so that PostgreSQL locks the row even when nothing changes.
        self.touch_contact = contact.on_conflict_do_update(
            index_elements=[Contact.tenant, Contact.wa_id],
            set_={
                "profile_name": case((name_is_newer, new.profile_name), else_=Contact.profile_name),
                "first_seen_at": _earlier(Contact.first_seen_at, new.first_seen_at),
                "last_seen_at": _later(Contact.last_seen_at, new.last_seen_at),
                "last_customer_message_at": _later(Contact.last_customer_message_at, new.last_customer_message_at),
            },
        )
        self.open_conversation = select(Conversation.id).where(
            Conversation.tenant == bindparam("tenant"),
            Conversation.contact == bindparam("contact"),
            Conversation.status == CONVERSATION_OPEN,
        )
        self.new_conversation = insert(Conversation).returning(Conversation.id)
        self.inbound_by_wamid = select(Message.type, Message.conversation_id).where(
            Message.tenant == bindparam("tenant"), Message.wamid == bindparam("wamid")
        )
        self.outbound_by_command = select(Message.type, Message.conversation_id).where(
            Message.tenant == bindparam("tenant"), Message.command_id == bindparam("command_id")
        )
        self.delivery_by_command = select(Message.wamid, Message.status).where(
            Message.tenant == bindparam("tenant"), Message.command_id == bindparam("command_id")
        )
        self.upsert_inbound = _fill_placeholder(upsert, Message.wamid, INBOUND_CONTENT)
        self.upsert_outbound = _fill_placeholder(upsert, Message.command_id, OUTBOUND_CONTENT)
        self.outbound_placeholder = upsert(Message).on_conflict_do_nothing(
            index_elements=[Message.tenant, Message.command_id]
        )
        self.update_by_command = update(Message).where(
            Message.tenant == bindparam("where_tenant"), Message.command_id == bindparam("where_command_id")
        )
        self.update_by_wamid = update(Message).where(
            Message.tenant == bindparam("where_tenant"), Message.wamid == bindparam("where_wamid")
        )
        status = upsert(MessageStatus)
        # A status reported twice keeps its earliest time.
        self.upsert_status = status.on_conflict_do_update(
            index_elements=[MessageStatus.tenant, MessageStatus.wamid, MessageStatus.status],
            set_={"at": status.excluded.at},
            where=status.excluded.at < MessageStatus.at,
        )
        self.statuses_of = select(
            MessageStatus.status, MessageStatus.at, MessageStatus.error_code, MessageStatus.error_title
        ).where(MessageStatus.tenant == bindparam("tenant"), MessageStatus.wamid == bindparam("wamid"))
        self.turn_known = select(Turn.turn_id).where(
            Turn.tenant == bindparam("tenant"), Turn.turn_id == bindparam("turn_id")
        )
        self.conversation_of_messages = (
            select(Message.conversation_id)
            .where(Message.tenant == bindparam("tenant"), Message.wamid.in_(bindparam("wamids", expanding=True)))
            .limit(1)
        )
        self.insert_turn = upsert(Turn).on_conflict_do_nothing(index_elements=[Turn.tenant, Turn.turn_id])
        # A customer who writes resumes the marketing messages they had stopped (131050) before.
        self.resume_marketing = (
            update(ContactPreference)
            .where(
                ContactPreference.tenant == bindparam("where_tenant"),
                ContactPreference.contact == bindparam("where_contact"),
                ContactPreference.marketing_stopped_at < bindparam("where_written_at"),
            )
            .values(marketing_stopped_at=None, updated_at=bindparam("updated_at"))
        )
        link = upsert(Message)
        self.link_to_turn = link.on_conflict_do_update(
            index_elements=[Message.tenant, Message.wamid],
            set_={"turn_id": link.excluded.turn_id},
            where=Message.turn_id.is_(None),
        )


def _fill_placeholder(
    upsert: Callable[[type[Base]], Upsert], key: InstrumentedAttribute[str | None], content: tuple[str, ...]
) -> Upsert:
    """Insert a message by its unique key, or fill in the placeholder (type NULL) holding that key."""
    stmt = upsert(Message)
    return stmt.on_conflict_do_update(
        index_elements=[Message.tenant, key],
        set_={name: stmt.excluded[name] for name in content},
        where=Message.type.is_(None),
    )


class ConversationStore:
    """Contacts, conversations, messages, statuses and turns of every tenant."""

    def __init__(self, engine: AsyncEngine) -> None:
        upsert = UPSERTS.get(engine.dialect.name)
        if upsert is None:
            raise StoreError(f"unsupported database {engine.dialect.name!r}")
        self._engine = engine
        self._sql = _Statements(upsert)

    # --- writes ---

    async def record_inbound(self, message: inbound_pb2.InboundMessage, seq: int) -> Recorded:
        """A customer's message, `seq` being its ZF_INBOUND stream sequence."""
        async with self._engine.begin() as conn:
            return await self._write_inbound(conn, message, seq)

    async def record_outbound(self, command: outbound_pb2.OutboundCommand) -> Recorded:
        """A message the bot (or, later, an agent) sends, recorded when the command is published.

        Mark-read and typing commands are not messages and are ignored. The wamid comes later,
        with the Graph API's result (`record_outbound_result`).
        """
        async with self._engine.begin() as conn:
            return await self._write_outbound(conn, command)

    async def record_outbound_result(self, result: outbound_pb2.OutboundResult) -> Recorded:
        """What the Graph API made of a command: the message's wamid, or why Meta refused it."""
        async with self._engine.begin() as conn:
            return await self._write_outbound_result(conn, result)

    async def record_status(self, report: inbound_pb2.StatusUpdate) -> Recorded:
        """A delivery status from Meta, whether or not its message is recorded yet.

        Statuses only move forward (sent < delivered < read; failed is terminal): a late
        "delivered" after "read" fills in delivered_at and leaves the status at read.
        """
        async with self._engine.begin() as conn:
            return await self._write_status(conn, report)

    async def record_turn(self, turn: turn_pb2.Turn) -> Recorded:
        """A turn event; its inbound messages are linked to it, recorded yet or not."""
        async with self._engine.begin() as conn:
            return await self._write_turn(conn, turn)

    async def record_batch(self, events: Sequence[Event]) -> list[Recorded | Exception]:
        """Write many events of any kind in one transaction; one outcome per event, in order.

        Events are applied sorted by (tenant, contact), each contact's in the order given, so
        concurrent batches take contact row locks in the same order and cannot deadlock. When an
        event fails, the batch is rolled back and every event is written again in a transaction
        of its own, so only the events that fail alone are reported failed. A failure no event
        caused (the database unreachable, the commit refused) is every event's outcome: writing
        them one by one would only fail the same way, once per event.
        """
        in_lock_order = sorted(range(len(events)), key=lambda index: _contact_of(events[index]))
        written: dict[int, Recorded] = {}
        try:
            async with self._engine.begin() as conn:
                for index in in_lock_order:
                    try:
                        written[index] = await self._write(conn, events[index])
                    except Exception as error:
                        raise _EventFailed from error
        except _EventFailed as failure:
            log.warning(
                "batch failed, writing its events one at a time",
                events=len(events),
                error=type(failure.__cause__).__name__,
            )
            return [await self._record_alone(event) for event in events]
        except Exception as error:
            return [error] * len(events)
        return [written[index] for index in range(len(events))]

    async def _record_alone(self, event: Event) -> Recorded | Exception:
        try:
            async with self._engine.begin() as conn:
                return await self._write(conn, event)
        except Exception as error:
            return error

    async def _write(self, conn: AsyncConnection, event: Event) -> Recorded:
        match event:
            case SequencedInbound(message, seq):
                return await self._write_inbound(conn, message, seq)
            case outbound_pb2.OutboundCommand():
                return await self._write_outbound(conn, event)
            case outbound_pb2.OutboundResult():
                return await self._write_outbound_result(conn, event)
            case inbound_pb2.StatusUpdate():
                return await self._write_status(conn, event)
            case turn_pb2.Turn():
                return await self._write_turn(conn, event)

    async def _write_inbound(self, conn: AsyncConnection, message: inbound_pb2.InboundMessage, seq: int) -> Recorded:
        at = _time(message.sent_at) or _time(message.received_at) or _now()
        content = message.WhichOneof("content")
        await self._touch_contact(
            conn,
            message.tenant,
            message.contact,
            at=at,
            seen_at=at,
            customer_message_at=at,
            profile_name=message.contact_name or None,
        )
        recorded = await self._record_message(
            conn,
            self._sql.inbound_by_wamid,
            self._sql.upsert_inbound,
            "wamid",
            tenant=message.tenant,
            contact=message.contact,
            wamid=message.wamid,
            direction=INBOUND,
            type=message.type or content or "unknown",
            text=describe(message),
            body=_as_dict(getattr(message, content)) if content else {},
            quoted_wamid=message.quoted_wamid or None,
            stream_seq=seq,
            created_at=at,
            received_at=_time(message.received_at),
        )
        if recorded is Recorded.NEW:
            await conn.execute(
                self._sql.resume_marketing,
                {
                    "where_tenant": message.tenant,
                    "where_contact": message.contact,
                    "where_written_at": at,
                    "updated_at": _now(),
                },
            )
        return recorded

    async def _write_outbound(self, conn: AsyncConnection, command: outbound_pb2.OutboundCommand) -> Recorded:
        kind = command.WhichOneof("body")
        if kind == "text":
            text, body = command.text.body, _as_dict(command.text)
        elif kind == "interactive":
            text, body = command.interactive.body, _as_dict(command.interactive)
        elif kind == "template":
            text, body = f"[template {command.template.name}]", _as_dict(command.template)
        else:
            return Recorded.IGNORED
        at = _time(command.created_at) or _now()
        await self._touch_contact(conn, command.tenant, command.contact, at=at)
        return await self._record_message(
            conn,
            self._sql.outbound_by_command,
            self._sql.upsert_outbound,
            "command_id",
            tenant=command.tenant,
            contact=command.contact,
            command_id=command.command_id,
            direction=OUTBOUND,
            type=kind,
            text=text,
            body=body,
            quoted_wamid=command.reply_to_wamid or None,
            turn_id=command.turn_id or None,
            created_at=at,
        )

    async def _write_outbound_result(self, conn: AsyncConnection, result: outbound_pb2.OutboundResult) -> Recorded:
        at = _time(result.at) or _now()
        if result.result == "sent" and result.wamid:
            delivery: dict[str, Any] = {"wamid": result.wamid}
        elif result.result in REFUSED_RESULTS:
            delivery = {
                "status": FAILED,
                "failed_at": at,
                "error_code": result.error_code or None,
                "error_title": result.error_title or None,
            }
        else:
            return Recorded.IGNORED
        await self._touch_contact(conn, result.tenant, result.contact, at=at)
        known = (
            await conn.execute(
                self._sql.delivery_by_command, {"tenant": result.tenant, "command_id": result.command_id}
            )
        ).first()
        if known is not None and (known.wamid is not None or known.status == FAILED):
            return Recorded.DUPLICATE
        if known is not None:
            await conn.execute(
                self._sql.update_by_command,
                {"where_tenant": result.tenant, "where_command_id": result.command_id, **delivery},
            )
        else:
            # The result came before its command: keep it in a placeholder the command fills.
            conversation_id = await self._open_conversation(conn, result.tenant, result.contact, at)
            await conn.execute(
                self._sql.outbound_placeholder,
                {
                    "tenant": result.tenant,
                    "contact": result.contact,
                    "conversation_id": conversation_id,
                    "direction": OUTBOUND,
                    "command_id": result.command_id,
                    "turn_id": result.turn_id or None,
                    "created_at": at,
                    **delivery,
                },
            )
        if result.wamid:
            await self._apply_statuses(conn, result.tenant, result.wamid)
        return Recorded.NEW

    async def _write_status(self, conn: AsyncConnection, report: inbound_pb2.StatusUpdate) -> Recorded:
        status = STATUS_ALIASES.get(report.status, report.status)
        if status not in STATUS_ORDER:
            return Recorded.IGNORED
        at = _time(report.at) or _now()
        error = report.errors[0] if report.errors else None
        await self._touch_contact(conn, report.tenant, report.contact, at=at, seen_at=at if status == "read" else None)
        recorded = await conn.execute(
            self._sql.upsert_status,
            {
                "tenant": report.tenant,
                "wamid": report.wamid,
                "status": status,
                "contact": report.contact,
                "at": at,
                "error_code": error.code if error else None,
                "error_title": error.title if error else None,
            },
        )
        if not recorded.rowcount:
            return Recorded.DUPLICATE
        await self._apply_statuses(conn, report.tenant, report.wamid)
        return Recorded.NEW

    async def _write_turn(self, conn: AsyncConnection, turn: turn_pb2.Turn) -> Recorded:
        created_at = _time(turn.started_at) or _time(turn.answered_at) or _now()
        answered_at = _time(turn.answered_at)
        closed_at = _time(turn.closed_at)
        latency_ms = round((answered_at - closed_at).total_seconds() * 1000) if answered_at and closed_at else None
        await self._touch_contact(conn, turn.tenant, turn.contact, at=created_at)
        if await conn.scalar(self._sql.turn_known, {"tenant": turn.tenant, "turn_id": turn.turn_id}):
            return Recorded.DUPLICATE
        # The conversation its messages are in, when they are recorded; else the open one.
        conversation_id = await conn.scalar(
            self._sql.conversation_of_messages, {"tenant": turn.tenant, "wamids": list(turn.inbound_wamids)}
        )
        if conversation_id is None:
            conversation_id = await self._open_conversation(conn, turn.tenant, turn.contact, created_at)
        inserted = await conn.execute(
            self._sql.insert_turn,
            {
                "tenant": turn.tenant,
                "turn_id": turn.turn_id,
                "contact": turn.contact,
                "conversation_id": conversation_id,
                "responder": turn.responder,
                "outcome": turn.outcome,
                "rule": turn.rule or None,
                "latency_ms": latency_ms,
                "prompt_tokens": turn.prompt_tokens,
                "completion_tokens": turn.completion_tokens,
                "message_count": len(turn.inbound_wamids),
                "created_at": created_at,
                "answered_at": answered_at,
                "closed_at": closed_at,
            },
        )
        if not inserted.rowcount:
            return Recorded.DUPLICATE
        if turn.inbound_wamids:
            # Recorded messages get the turn id; the others become placeholders that keep it.
            await conn.execute(
                self._sql.link_to_turn,
                [
                    {
                        "tenant": turn.tenant,
                        "contact": turn.contact,
                        "conversation_id": conversation_id,
                        "direction": INBOUND,
                        "wamid": wamid,
                        "turn_id": turn.turn_id,
                        "created_at": created_at,
                    }
                    for wamid in dict.fromkeys(turn.inbound_wamids)
                ],
            )
        if OPT_OUT_ACTION in turn.actions:
            await record_opt_out(conn, turn.tenant, turn.contact, "keyword", created_at)
        return Recorded.NEW

    async def close_conversation(self, tenant: str, contact: str, at: datetime) -> bool:
        """Close the contact's open conversation; the next message opens a new one."""
        async with self._engine.begin() as conn:
            closed = await conn.execute(
                update(Conversation)
                .where(
                    Conversation.tenant == tenant,
                    Conversation.contact == contact,
                    Conversation.status == CONVERSATION_OPEN,
                )
                .values(status=CONVERSATION_CLOSED, closed_at=at)
            )
        return bool(closed.rowcount)

    # --- reads ---

    async def history(self, tenant: str, contact: str, turns: int) -> tuple[HistoryEntry, ...]:
        """The contact's last `turns` exchanges, oldest first, as a language model is shown them.

        An exchange is a turn in which the customer said something: a customer entry (the turn's
        messages, one per line) and a bot entry (its replies, one per line).
        """
        if turns <= 0:
            return ()
        async with self._engine.connect() as conn:
            recent = (
                await conn.execute(
                    select(Turn.turn_id, Turn.created_at)
                    .join(Message, and_(Message.tenant == Turn.tenant, Message.turn_id == Turn.turn_id))
                    .where(
                        Turn.tenant == tenant,
                        Turn.contact == contact,
                        Message.direction == INBOUND,
                        Message.type.not_in(CHAT_EVENT_TYPES),
                    )
                    .group_by(Turn.turn_id, Turn.created_at)
                    .order_by(Turn.created_at.desc(), Turn.turn_id.desc())
                    .limit(turns)
                )
            ).all()
            if not recent:
                return ()
            messages = (
                await conn.execute(
                    select(Message.turn_id, Message.direction, Message.text)
                    .where(
                        Message.tenant == tenant,
                        Message.turn_id.in_([row.turn_id for row in recent]),
                        Message.text.is_not(None),
                        or_(Message.direction == OUTBOUND, Message.type.not_in(CHAT_EVENT_TYPES)),
                    )
                    # Inbound in stream (arrival) order; outbound have no sequence: in the order made.
                    .order_by(Message.stream_seq, Message.created_at, Message.id)
                )
            ).all()
        said: dict[tuple[str, str], list[str]] = defaultdict(list)
        for message in messages:
            said[(message.turn_id, message.direction)].append(message.text)
        entries: list[HistoryEntry] = []
        for row in reversed(recent):
            entries.append(HistoryEntry("customer", "\n".join(said[(row.turn_id, INBOUND)])))
            entries.append(HistoryEntry("bot", "\n".join(said[(row.turn_id, OUTBOUND)])))
        return tuple(entries)

    # --- building blocks ---

    async def _touch_contact(
        self,
        conn: AsyncConnection,
        tenant: str,
        wa_id: str,
        *,
        at: datetime,
        seen_at: datetime | None = None,
        customer_message_at: datetime | None = None,
        profile_name: str | None = None,
    ) -> None:
        """Create or update the contact, taking its row lock for the rest of the transaction.

        Times only move the right way (first seen earlier, last seen later), so events applied
        out of order leave the same row; a redelivered old message does not bring back an old
        profile name.
        """
        await conn.execute(
            self._sql.touch_contact,
            {
                "tenant": tenant,
                "wa_id": wa_id,
                "profile_name": profile_name,
                "first_seen_at": at,
                "last_seen_at": seen_at,
                "last_customer_message_at": customer_message_at,
            },
        )

    async def _open_conversation(self, conn: AsyncConnection, tenant: str, contact: str, at: datetime) -> int:
        """The contact's open conversation, opened now if there is none."""
        open_id = await conn.scalar(self._sql.open_conversation, {"tenant": tenant, "contact": contact})
        if open_id is not None:
            return int(open_id)
        opened = await conn.execute(
            self._sql.new_conversation,
            {"tenant": tenant, "contact": contact, "opened_at": at, "status": CONVERSATION_OPEN},
        )
        return int(opened.scalar_one())

    async def _record_message(
        self, conn: AsyncConnection, find: Select[str | None, int], upsert: Upsert, key: str, **row: Any
    ) -> Recorded:
        """Insert a message by its unique key, or fill in the placeholder holding that key."""
        known = (await conn.execute(find, {"tenant": row["tenant"], key: row[key]})).first()
        if known is not None and known.type is not None:
            # Checked first so that a redelivery long after does not open a new conversation.
            return Recorded.DUPLICATE
        conversation_id = (
            known.conversation_id
            if known is not None
            else await self._open_conversation(conn, row["tenant"], row["contact"], row["created_at"])
        )
        written = await conn.execute(upsert, {**row, "conversation_id": conversation_id})
        return Recorded.NEW if written.rowcount else Recorded.DUPLICATE

    async def _apply_statuses(self, conn: AsyncConnection, tenant: str, wamid: str) -> None:
        """Recompute a message's delivery columns from every status reported for its wamid."""
        reported = {
            row.status: row for row in await conn.execute(self._sql.statuses_of, {"tenant": tenant, "wamid": wamid})
        }
        if not reported:
            return
        failure = reported.get(FAILED)
        await conn.execute(
            self._sql.update_by_wamid,
            {
                "where_tenant": tenant,
                "where_wamid": wamid,
                "status": max(reported, key=STATUS_ORDER.index),
                "sent_at": reported["sent"].at if "sent" in reported else None,
                "delivered_at": reported["delivered"].at if "delivered" in reported else None,
                "read_at": reported["read"].at if "read" in reported else None,
                "failed_at": failure.at if failure else None,
                "error_code": failure.error_code if failure else None,
                "error_title": failure.error_title if failure else None,
            },
        )


def _contact_of(event: Event) -> tuple[str, str]:
    """The (tenant, contact) whose row lock writing the event takes."""
    about = event.message if isinstance(event, SequencedInbound) else event
    return about.tenant, about.contact


def _time(stamp: Timestamp) -> datetime | None:
    """A protobuf timestamp as an aware datetime; None when unset."""
    if stamp.seconds == 0 and stamp.nanos == 0:
        return None
    return stamp.ToDatetime(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _as_dict(message: ProtoMessage) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def _later(current: SQLColumnExpression[Any], candidate: SQLColumnExpression[Any]) -> SQLColumnExpression[Any]:
    """The later of two nullable times (SQLite's max() would return NULL if either is)."""
    return case((current.is_(None), candidate), (candidate > current, candidate), else_=current)


def _earlier(current: SQLColumnExpression[Any], candidate: SQLColumnExpression[Any]) -> SQLColumnExpression[Any]:
    return case((current.is_(None), candidate), (candidate < current, candidate), else_=current)
