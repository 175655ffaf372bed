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

Every write transaction starts by upserting the contact's row. On PostgreSQL that takes the row's
lock, so the writes about one contact run one at a time and each sees what the previous one
committed (a status and the result that gives its message the wamid cannot miss each other);
on SQLite, writers are serialised anyway. Contacts do not wait on each other.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeAlias

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message as ProtoMessage
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import SQLColumnExpression, and_, case, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import InstrumentedAttribute

from zapflow.conversation.responder import HistoryEntry, describe
from zapflow.store.errors import StoreError
from zapflow.store.models import (
    CONVERSATION_CLOSED,
    CONVERSATION_OPEN,
    INBOUND,
    OUTBOUND,
    STATUS_ORDER,
    Base,
    Contact,
    Conversation,
    Message,
    MessageStatus,
    Turn,
)
from zapflow.v1 import inbound_pb2, outbound_pb2, turn_pb2

Upsert: TypeAlias = postgresql.Insert | sqlite.Insert
# Both dialects spell INSERT ... ON CONFLICT alike; only the construct differs.
UPSERTS: dict[str, Callable[[type[Base]], Upsert]] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}

FAILED = "failed"
# Meta reports "played" when a voice note was listened to: for delivery, that is "read".
STATUS_ALIASES = {"played": "read"}
# Graph API results (OutboundResult.result) that mean Meta refused the message for good.
REFUSED_RESULTS = frozenset({"failed", "window_closed"})
# Events about the chat rather than words of the customer: the conversation engine does not
# answer them (its SILENT_TYPES) and they are not part of the history a model is shown.
CHAT_EVENT_TYPES = ("reaction", "system", "unsupported")


class Recorded(StrEnum):
    """What a write did."""

    NEW = "new"  # the fact was stored (or made an earlier one more precise)
    DUPLICATE = "duplicate"  # already known: a redelivery, nothing changed
    IGNORED = "ignored"  # not something the store keeps, e.g. a mark-read command


class ConversationStore:
    """Contacts, conversations, messages, statuses and turns of every tenant."""

    def __init__(self, engine: AsyncEngine) -> None:
        upsert = UPSERTS.get(engine.dialect.name)
        if upsert is None:
            raise StoreError(f"unsupported database {engine.dialect.name!r}")
        self._engine = engine
        self._upsert = upsert

    # --- writes ---

    async def record_inbound(self, message: inbound_pb2.InboundMessage, seq: int) -> Recorded:
        """A customer's message, `seq` being its ZF_INBOUND stream sequence."""
        at = _time(message.sent_at) or _time(message.received_at) or _now()
        content = message.WhichOneof("content")
        async with self._engine.begin() as conn:
            await self._touch_contact(
                conn,
                message.tenant,
                message.contact,
                at=at,
                seen_at=at,
                customer_message_at=at,
                profile_name=message.contact_name or None,
            )
            return await self._record_message(
                conn,
                message.tenant,
                message.contact,
                Message.wamid,
                message.wamid,
                at,
                direction=INBOUND,
                type=message.type or content or "unknown",
                text=describe(message),
                body=_as_dict(getattr(message, content)) if content else {},
                quoted_wamid=message.quoted_wamid or None,
                stream_seq=seq,
                created_at=at,
            )

    async def record_outbound(self, command: outbound_pb2.OutboundCommand) -> Recorded:
        """A message the bot (or, later, an agent) sends, recorded when the command is published.

        Mark-read and typing commands are not messages and are ignored. The wamid comes later,
        with the Graph API's result (`record_outbound_result`).
        """
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
        async with self._engine.begin() as conn:
            await self._touch_contact(conn, command.tenant, command.contact, at=at)
            return await self._record_message(
                conn,
                command.tenant,
                command.contact,
                Message.command_id,
                command.command_id,
                at,
                direction=OUTBOUND,
                type=kind,
                text=text,
                body=body,
                quoted_wamid=command.reply_to_wamid or None,
                turn_id=command.turn_id or None,
                created_at=at,
            )

    async def record_outbound_result(self, result: outbound_pb2.OutboundResult) -> Recorded:
        """What the Graph API made of a command: the message's wamid, or why Meta refused it."""
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
        async with self._engine.begin() as conn:
            await self._touch_contact(conn, result.tenant, result.contact, at=at)
            known = (
                await conn.execute(
                    select(Message.wamid, Message.status).where(
                        Message.tenant == result.tenant, Message.command_id == result.command_id
                    )
                )
            ).first()
            if known is not None and (known.wamid is not None or known.status == FAILED):
                return Recorded.DUPLICATE
            if known is not None:
                await conn.execute(
                    update(Message)
                    .where(Message.tenant == result.tenant, Message.command_id == result.command_id)
                    .values(**delivery)
                )
            else:
                # The result came before its command: keep it in a placeholder the command fills.
                conversation_id = await self._open_conversation(conn, result.tenant, result.contact, at)
                await conn.execute(
                    self._upsert(Message)
                    .values(
                        tenant=result.tenant,
                        contact=result.contact,
                        conversation_id=conversation_id,
                        direction=OUTBOUND,
                        command_id=result.command_id,
                        turn_id=result.turn_id or None,
                        created_at=at,
                        **delivery,
                    )
                    .on_conflict_do_nothing(index_elements=[Message.tenant, Message.command_id])
                )
            if result.wamid:
                await self._apply_statuses(conn, result.tenant, result.wamid)
        return Recorded.NEW

    async def record_status(self, report: inbound_pb2.StatusUpdate) -> Recorded:
        """A delivery status from Meta, whether or not its message is recorded yet.

        Statuses only move forward (sent < delivered < read; failed is terminal): a late
        "delivered" after "read" fills in delivered_at and leaves the status at read.
        """
        status = STATUS_ALIASES.get(report.status, report.status)
        if status not in STATUS_ORDER:
            return Recorded.IGNORED
        at = _time(report.at) or _now()
        error = report.errors[0] if report.errors else None
        async with self._engine.begin() as conn:
            await self._touch_contact(
                conn, report.tenant, report.contact, at=at, seen_at=at if status == "read" else None
            )
            stmt = self._upsert(MessageStatus).values(
                tenant=report.tenant,
                wamid=report.wamid,
                status=status,
                contact=report.contact,
                at=at,
                error_code=error.code if error else None,
                error_title=error.title if error else None,
            )
            # A status reported twice keeps its earliest time.
            stmt = stmt.on_conflict_do_update(
                index_elements=[MessageStatus.tenant, MessageStatus.wamid, MessageStatus.status],
                set_={"at": stmt.excluded.at},
                where=stmt.excluded.at < MessageStatus.at,
            )
            if not (await conn.execute(stmt)).rowcount:
                return Recorded.DUPLICATE
            await self._apply_statuses(conn, report.tenant, report.wamid)
        return Recorded.NEW

    async def record_turn(self, turn: turn_pb2.Turn) -> Recorded:
        """A turn event; its inbound messages are linked to it, recorded yet or not."""
        created_at = _time(turn.started_at) or _time(turn.answered_at) or _now()
        answered_at = _time(turn.answered_at)
        closed_at = _time(turn.closed_at)
        latency_ms = round((answered_at - closed_at).total_seconds() * 1000) if answered_at and closed_at else None
        async with self._engine.begin() as conn:
            await self._touch_contact(conn, turn.tenant, turn.contact, at=created_at)
            if await conn.scalar(select(Turn.turn_id).where(Turn.tenant == turn.tenant, Turn.turn_id == turn.turn_id)):
                return Recorded.DUPLICATE
            # The conversation its messages are in, when they are recorded; else the open one.
            conversation_id = await conn.scalar(
                select(Message.conversation_id)
                .where(Message.tenant == turn.tenant, Message.wamid.in_(list(turn.inbound_wamids)))
                .limit(1)
            )
            if conversation_id is None:
                conversation_id = await self._open_conversation(conn, turn.tenant, turn.contact, created_at)
            inserted = await conn.execute(
                self._upsert(Turn)
                .values(
                    tenant=turn.tenant,
                    turn_id=turn.turn_id,
                    contact=turn.contact,
                    conversation_id=conversation_id,
                    responder=turn.responder,
                    outcome=turn.outcome,
                    rule=turn.rule or None,
                    latency_ms=latency_ms,
                    prompt_tokens=turn.prompt_tokens,
                    completion_tokens=turn.completion_tokens,
                    message_count=len(turn.inbound_wamids),
                    created_at=created_at,
                    answered_at=answered_at,
                    closed_at=closed_at,
                )
                .on_conflict_do_nothing(index_elements=[Turn.tenant, Turn.turn_id])
            )
            if not inserted.rowcount:
                return Recorded.DUPLICATE
            if turn.inbound_wamids:
                # Recorded messages get the turn id; the others become placeholders that keep it.
                link = self._upsert(Message).values(
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
                    ]
                )
                await conn.execute(
                    link.on_conflict_do_update(
                        index_elements=[Message.tenant, Message.wamid],
                        set_={"turn_id": link.excluded.turn_id},
                        where=Message.turn_id.is_(None),
                    )
                )
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
        stmt = self._upsert(Contact).values(
            tenant=tenant,
            wa_id=wa_id,
            profile_name=profile_name,
            first_seen_at=at,
            last_seen_at=seen_at,
            last_customer_message_at=customer_message_at,
        )
        new = stmt.excluded
        name_is_newer = and_(
            new.profile_name.is_not(None),
            or_(
                Contact.last_customer_message_at.is_(None),
                new.last_customer_message_at >= Contact.last_customer_message_at,
            ),
        )
        # DO UPDATE (never DO NOTHING) so that PostgreSQL locks the row even when nothing changes.
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[Contact.tenant, Contact.wa_id],
                set_={
                    "profile_name": case((name_is_newer, new.profile_name), else_=Contact.profile_name),
                    "first_seen_at": _earlier(Contact.first_seen_at, new.first_seen_at),
                    "last_seen_at": _later(Contact.last_seen_at, new.last_seen_at),
                    "last_customer_message_at": _later(Contact.last_customer_message_at, new.last_customer_message_at),
                },
            )
        )

    async def _open_conversation(self, conn: AsyncConnection, tenant: str, contact: str, at: datetime) -> int:
        """The contact's open conversation, opened now if there is none."""
        open_id = await conn.scalar(
            select(Conversation.id).where(
                Conversation.tenant == tenant,
                Conversation.contact == contact,
                Conversation.status == CONVERSATION_OPEN,
            )
        )
        if open_id is not None:
            return open_id
        opened = await conn.execute(
            insert(Conversation)
            .values(tenant=tenant, contact=contact, opened_at=at, status=CONVERSATION_OPEN)
            .returning(Conversation.id)
        )
        return opened.scalar_one()

    async def _record_message(
        self,
        conn: AsyncConnection,
        tenant: str,
        contact: str,
        key: InstrumentedAttribute[str | None],
        key_value: str,
        at: datetime,
        **content: Any,
    ) -> Recorded:
        """Insert a message by its unique key, or fill in the placeholder holding that key."""
        known = (
            await conn.execute(
                select(Message.type, Message.conversation_id).where(Message.tenant == tenant, key == key_value)
            )
        ).first()
        if known is not None and known.type is not None:
            # Checked first so that a redelivery long after does not open a new conversation.
            return Recorded.DUPLICATE
        conversation_id = (
            known.conversation_id if known is not None else await self._open_conversation(conn, tenant, contact, at)
        )
        stmt = self._upsert(Message).values(
            tenant=tenant, contact=contact, conversation_id=conversation_id, **{key.key: key_value}, **content
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[Message.tenant, key],
            set_={name: stmt.excluded[name] for name in content},
            where=Message.type.is_(None),
        )
        return Recorded.NEW if (await conn.execute(stmt)).rowcount else Recorded.DUPLICATE

    async def _apply_statuses(self, conn: AsyncConnection, tenant: str, wamid: str) -> None:
        """Recompute a message's delivery columns from every status reported for its wamid."""
        reported = {
            row.status: row
            for row in await conn.execute(
                select(
                    MessageStatus.status, MessageStatus.at, MessageStatus.error_code, MessageStatus.error_title
                ).where(MessageStatus.tenant == tenant, MessageStatus.wamid == wamid)
            )
        }
        if not reported:
            return
        failure = reported.get(FAILED)
        await conn.execute(
            update(Message)
            .where(Message.tenant == tenant, Message.wamid == wamid)
            .values(
                status=max(reported, key=STATUS_ORDER.index),
                sent_at=reported["sent"].at if "sent" in reported else None,
                delivered_at=reported["delivered"].at if "delivered" in reported else None,
                read_at=reported["read"].at if "read" in reported else None,
                failed_at=failure.at if failure else None,
                error_code=failure.error_code if failure else None,
                error_title=failure.error_title if failure else None,
            )
        )


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
