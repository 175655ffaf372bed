"""The desk: every change to a handoff, the same whether the conversation engine, the inbox, the API or the CLI asks.

The relational store holds the truth (a handoff's state, its timeline, its agent); the owner key in
Redis is what the conversation engine and egress read on every turn and send, so the desk sets it
before a handoff becomes visible and deletes it only when the handoff is resolved. A periodic sweep
puts back an owner key Redis lost, assigns waiting conversations, times out idle ones and refreshes
the queue gauges.

Customer messages reach the desk as the engine's forwarded events; what the agents send goes out as
outbound commands with `sender` set, through egress like the bot's (rate limit, order, idempotency).
Agent command ids are `hf:<handoff>:a:<key>`, the customer notice's `hf:<request>:notice`: the
transcript tells agents' messages from the bot's by that prefix.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from redis.asyncio import Redis
from sqlalchemy import Row, and_, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from zapflow.handoff import hours
from zapflow.platform import bus, catalogue, keys, metrics
from zapflow.platform.logging import get_logger
from zapflow.store.models import (
    HANDOFF_ASSIGNED,
    HANDOFF_RESOLVED,
    HANDOFF_WAITING,
    INBOUND,
    Contact,
    Conversation,
    Handoff,
    HandoffEvent,
    Message,
)
from zapflow.tenants.model import BotTenant
from zapflow.tenants.registry import TenantRegistry
from zapflow.v1 import handoff_pb2, outbound_pb2
from zapflow.whatsapp import window
from zapflow.whatsapp.messages import describe

log = get_logger(__name__)

COMMAND_PREFIX = "hf:"
AGENT_TOOK = "agent_took"
REOPENED = "forwarded"  # a forwarded message found no open handoff (it was resolved meanwhile)
SYSTEM = "system"
BOT = "bot"
# Without a measured wait yet, the customer is told this much.
DEFAULT_EXPECTED_WAIT_S = 300.0
RECENT_ASSIGNMENTS = 20
State = Literal["waiting", "assigned", "resolved"]


class DeskError(Exception):
    """A request the desk refuses; `kind` maps to an HTTP status and a CLI message."""

    def __init__(self, kind: Literal["not_found", "conflict", "invalid", "window_closed"], message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Summary:
    """A handoff as the queue shows it."""

    id: int
    tenant: str
    contact: str
    request_id: str
    customer_name: str | None
    status: str
    reason: str
    detail: str | None
    priority: int
    agent: str | None
    labels: list[str]
    requested_at: datetime
    assigned_at: datetime | None
    first_reply_at: datetime | None
    resolved_at: datetime | None
    resolution: str | None
    resolved_by: str | None
    last_customer_at: datetime | None
    last_activity_at: datetime

    @property
    def window_closes_at(self) -> datetime | None:
        return window.closes_at(self.last_customer_at)

    def window_open(self, now: datetime) -> bool:
        return window.is_open(self.last_customer_at, now)

    def as_json(self) -> dict[str, Any]:
        return {**_json(self), "window_closes_at": _iso(self.window_closes_at)}


@dataclass(frozen=True)
class Entry:
    """One line of a conversation: a message either way, or something that happened (a note, a transfer)."""

    id: str
    at: datetime
    role: Literal["customer", "bot", "agent", "system", "note", "event"]
    text: str
    author: str | None = None
    status: str | None = None
    seq: int | None = None

    def as_json(self) -> dict[str, Any]:
        return _json(self)


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _json(record: Summary | Entry) -> dict[str, Any]:
    """A record's fields as JSON takes them: times in ISO 8601."""
    return {k: _iso(v) for k, v in asdict(record).items()}


@dataclass(frozen=True)
class Detail:
    summary: Summary
    transcript: list[Entry]
    timeline: list[Entry]


@dataclass
class _ContactLocks:
    """One handler at a time per contact in this process, in arrival order (asyncio locks are fair)."""

    held: dict[tuple[str, str], tuple[asyncio.Lock, int]] = field(default_factory=dict)

    @asynccontextmanager
    async def hold(self, tenant: str, contact: str) -> AsyncIterator[None]:
        key = (tenant, contact)
        lock, users = self.held.get(key, (asyncio.Lock(), 0))
        self.held[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self.held[key]
            if users == 1:
                del self.held[key]
            else:
                self.held[key] = (lock, users - 1)


def mask_phone(contact: str) -> str:
    """A phone number as a notification shows it: enough for an agent to recognise, not to dial."""
    return f"+{contact[:2]}…{contact[-4:]}" if len(contact) > 6 else "+…"


class Desk:
    def __init__(
        self,
        engine: AsyncEngine,
        redis: Redis,
        nc: NATS,
        js: JetStreamContext,
        registry: TenantRegistry,
        public_url: str = "",
        presence_window_s: float = 60.0,
        max_transcript_messages: int = 500,
    ) -> None:
        self._engine = engine
        self._redis = redis
        self._nc = nc
        self._js = js
        self._registry = registry
        self._public_url = public_url.rstrip("/")
        self._presence_window_s = presence_window_s
        self._max_transcript = max_transcript_messages
        self._locks = _ContactLocks()

    # --- from the conversation engine (the handoff-events consumer) ---

    async def on_event(self, event: handoff_pb2.HandoffEvent, msg: Msg | None = None) -> None:
        """A turn asked for a person, or forwarded a customer's messages to one."""
        tenant = self._registry.by_name(event.tenant)
        if tenant is None:
            raise bus.RetryLater(f"tenant {event.tenant} is not in the registry (yet)")
        async with self._locks.hold(event.tenant, event.contact):
            if event.kind == "requested":
                await self._requested(tenant, event)
            else:
                await self._forwarded(tenant, event)

    async def _requested(self, tenant: BotTenant, event: handoff_pb2.HandoffEvent) -> None:
        at = _time(event.at)
        opened, summary = await self._open(
            tenant,
            event.contact,
            request_id=event.turn_id,
            reason=event.reason or "customer_asked",
            detail=event.detail or None,
            customer_name=next((m.contact_name for m in reversed(event.messages) if m.contact_name), None),
            at=at,
        )
        await self._record_forwarded(summary, event)
        # Re-read: the request's own messages open the customer's window, whether or not the recorder
        # has stored them yet.
        summary = await self.get(tenant.name, summary.id)
        if summary.status == HANDOFF_RESOLVED:
            return
        await self._announce(tenant, summary)
        if opened:
            metrics.HANDOFFS.labels(tenant.name, summary.reason).inc()
            await self._activity(summary, "requested")
            await self.assign_waiting(tenant)

    async def _announce(self, tenant: BotTenant, summary: Summary) -> None:
        """Tell the customer (inside their window only) and the agents' webhook that a person will answer.

        Every delivery of a request announces again: the ids make the copies vanish.
        """
        if summary.window_open(datetime.now(UTC)):
            wait = await self._expected_wait(tenant)
            online = len(await self.online_agents(tenant.name))
            text = hours.notice_text(tenant.spec.handoff, datetime.now(UTC), online, wait)
            command_id = f"{COMMAND_PREFIX}{summary.request_id}:notice"
            await self._send(tenant, summary, command_id, text, "handoff", "")
        await self._notify(tenant, summary, "requested", f"{summary.request_id}:requested")

    async def _forwarded(self, tenant: BotTenant, event: handoff_pb2.HandoffEvent) -> None:
        summary = await self.current(tenant.name, event.contact)
        if summary is None:
            # Resolved while these messages were on their way (or the request was lost): a person
            # still owes them an answer, so the conversation goes back to the queue.
            _, summary = await self._open(
                tenant,
                event.contact,
                request_id=event.turn_id,
                reason=REOPENED,
                detail=None,
                customer_name=None,
                at=_time(event.at),
            )
            metrics.HANDOFFS.labels(tenant.name, REOPENED).inc()
        if await self._record_forwarded(summary, event):
            await self._notify(tenant, summary, "message", f"{event.turn_id}:message")
            await self.assign_waiting(tenant)

    async def _record_forwarded(self, summary: Summary, event: handoff_pb2.HandoffEvent) -> bool:
        """Add the turn's messages to the handoff's timeline once; False when they were there already."""
        if not event.messages:
            return False
        wamids = [m.wamid for m in event.messages]
        last_sent = max((_time(m.sent_at) for m in event.messages if m.HasField("sent_at")), default=None)
        now = datetime.now(UTC)
        async with self._engine.begin() as conn:
            if await _logged_before(conn, summary.id, ("forwarded",), "turn_id", event.turn_id):
                return False
            await self._log(
                conn,
                summary,
                "forwarded",
                BOT,
                data={"turn_id": event.turn_id, "wamids": wamids, "seqs": list(event.inbound_seqs)},
            )
            values: dict[str, Any] = {"last_activity_at": now}
            if last_sent is not None and (summary.last_customer_at is None or last_sent > summary.last_customer_at):
                values["last_customer_at"] = last_sent
            await conn.execute(update(Handoff).where(Handoff.id == summary.id).values(**values))
        metrics.HANDOFF_FORWARDED.labels(summary.tenant).inc(len(wamids))
        seqs: list[int | None] = [*event.inbound_seqs] or [None] * len(wamids)
        entries = [
            Entry(m.wamid, _time(m.sent_at) if m.HasField("sent_at") else now, "customer", describe(m), seq=seq)
            for m, seq in zip(event.messages, seqs, strict=False)
        ]
        await self._activity(summary, "message", entries)
        return True

    # --- opening: a turn's request, an agent taking a conversation from the bot ---

    async def _open(
        self,
        tenant: BotTenant,
        contact: str,
        *,
        request_id: str,
        reason: str,
        detail: str | None,
        customer_name: str | None,
        at: datetime,
        agent: str | None = None,
    ) -> tuple[bool, Summary]:
        """Open a handoff unless the contact has one (or this request opened one before); sets the owner key."""
        # The owner key first: from this moment the bot sends nothing, even if the rest fails.
        await self._redis.set(keys.ContactKeys(tenant.name, contact).owner, request_id, nx=True)
        now = datetime.now(UTC)
        values: dict[str, Any] = {
            "tenant": tenant.name,
            "contact": contact,
            "request_id": request_id,
            "status": HANDOFF_ASSIGNED if agent else HANDOFF_WAITING,
            "reason": reason,
            "detail": detail,
            "priority": tenant.spec.handoff.priorities.get(reason, 0),
            "customer_name": customer_name,
            "agent": agent,
            "labels": [],
            "requested_at": at,
            "assigned_at": now if agent else None,
            "last_activity_at": now,
        }
        try:
            async with self._engine.begin() as conn:
                values["conversation_id"] = await conn.scalar(
                    select(Conversation.id).where(
                        Conversation.tenant == tenant.name,
                        Conversation.contact == contact,
                        Conversation.status == "open",
                    )
                )
                values["last_customer_at"] = await conn.scalar(
                    select(Contact.last_customer_message_at).where(
                        Contact.tenant == tenant.name, Contact.wa_id == contact
                    )
                )
                handoff_id = await conn.scalar(insert(Handoff).values(**values).returning(Handoff.id))
                assert handoff_id is not None
                row = await self._row(conn, tenant.name, handoff_id)
                summary = _summary(row)
                await self._log(conn, summary, "requested", agent or BOT, data={"reason": reason, "detail": detail})
                if agent:
                    await self._log(conn, summary, "assigned", agent, data={"agent": agent})
        except IntegrityError:
            # This request opened it before, or the contact has an open handoff: that one holds.
            async with self._engine.connect() as conn:
                found = (
                    await conn.execute(
                        select(Handoff).where(Handoff.tenant == tenant.name, Handoff.request_id == request_id)
                    )
                ).first()
            existing = _summary(found) if found is not None else await self.current(tenant.name, contact)
            if existing is None:
                raise bus.RetryLater("the contact's handoff changed while opening one") from None
            return False, existing
        return True, summary

    async def take(self, tenant_name: str, contact: str, agent: str | None) -> Summary:
        """Take the conversation from the bot: for the agent, or (`agent` None) into the tenant's queue.

        A conversation that waits already is claimed by the agent; without one, it stays as it is.
        """
        tenant = self._tenant(tenant_name)
        async with self._locks.hold(tenant_name, contact):
            current = await self.current(tenant_name, contact)
            if current is not None:
                return current if agent is None else await self.claim(tenant_name, current.id, agent)
            if agent is not None:
                await self._check_capacity(tenant, agent)
            opened, summary = await self._open(
                tenant,
                contact,
                request_id=f"take:{uuid.uuid4().hex}",
                reason=AGENT_TOOK,
                detail=None,
                customer_name=None,
                at=datetime.now(UTC),
                agent=agent,
            )
        if opened:
            metrics.HANDOFFS.labels(tenant_name, AGENT_TOOK).inc()
            if agent is None:
                await self._announce(tenant, summary)
                await self._activity(summary, "requested")
                await self.assign_waiting(tenant)
            else:
                await self._activity(summary, "assigned")
                await self._notify(tenant, summary, "assigned", f"{summary.request_id}:assigned")
        return summary

    # --- agents' operations ---

    async def claim(self, tenant_name: str, handoff_id: int, agent: str) -> Summary:
        """The agent takes a waiting conversation (or one already theirs: nothing changes)."""
        tenant = self._tenant(tenant_name)
        summary = await self.get(tenant_name, handoff_id)
        if summary.status == HANDOFF_ASSIGNED and summary.agent == agent:
            return summary
        if summary.status != HANDOFF_WAITING:
            raise DeskError("conflict", _not_waiting(summary))
        await self._check_capacity(tenant, agent)
        if not await self._assign(summary, agent, actor=agent):
            raise DeskError("conflict", _not_waiting(await self.get(tenant_name, handoff_id)))
        return await self.get(tenant_name, handoff_id)

    async def transfer(self, tenant_name: str, handoff_id: int, actor: str, to_agent: str | None) -> Summary:
        """Give an open conversation to another agent, or back to the queue (`to_agent` None)."""
        tenant = self._tenant(tenant_name)
        summary = await self.get(tenant_name, handoff_id)
        if summary.status == HANDOFF_RESOLVED:
            raise DeskError("conflict", "the conversation is resolved")
        if to_agent is not None:
            await self._check_capacity(tenant, to_agent)
        status = HANDOFF_ASSIGNED if to_agent else HANDOFF_WAITING
        now = datetime.now(UTC)
        async with self._engine.begin() as conn:
            changed = await conn.execute(
                update(Handoff)
                .where(Handoff.id == handoff_id, Handoff.status == summary.status, _same_agent(summary.agent))
                # Changing hands restarts the inactivity clock.
                .values(status=status, agent=to_agent, assigned_at=now if to_agent else None, last_activity_at=now)
            )
            if not changed.rowcount:
                raise DeskError("conflict", "the conversation changed meanwhile; reload it")
            kind = "transferred" if to_agent else "requeued"
            await self._log(conn, summary, kind, actor, data={"from": summary.agent, "to": to_agent})
        after = await self.get(tenant_name, handoff_id)
        await self._activity(after, kind)
        await self._notify(tenant, after, "transferred", f"{handoff_id}:{uuid.uuid4().hex}")
        if to_agent is None:
            await self.assign_waiting(tenant)
        return after

    async def reply(self, tenant_name: str, handoff_id: int, agent: str, text: str, key: str | None = None) -> Entry:
        """Send the agent's free text, inside the customer's 24-hour window only."""
        text = text.strip()
        if not text:
            raise DeskError("invalid", "the reply is empty")
        if len(text) > 4096:
            raise DeskError("invalid", f"the reply has {len(text)} characters; WhatsApp takes at most 4096")
        tenant = self._tenant(tenant_name)
        summary = await self._writable(tenant_name, handoff_id, agent)
        if not summary.window_open(datetime.now(UTC)):
            metrics.HANDOFF_AGENT_MESSAGES.labels(tenant_name, "text", "refused_window").inc()
            raise DeskError(
                "window_closed",
                "the customer's 24-hour window is closed"
                + (f" (since {summary.window_closes_at:%Y-%m-%d %H:%M} UTC)" if summary.window_closes_at else "")
                + ": WhatsApp delivers only an approved template now; send one of the tenant's templates",
            )
        command_id = f"{COMMAND_PREFIX}{handoff_id}:a:{_key(key)}"
        await self._send(tenant, summary, command_id, text, "agent", agent)
        return await self._sent(summary, agent, command_id, "reply", text, "text")

    async def send_template(
        self,
        tenant_name: str,
        handoff_id: int,
        agent: str,
        name: str,
        parameters: Sequence[str],
        key: str | None = None,
    ) -> Entry:
        """Send one of the tenant's approved templates (the only way to write once the window closed)."""
        tenant = self._tenant(tenant_name)
        choices = {template.name: template for template in tenant.spec.handoff.templates}
        template = choices.get(name)
        if template is None:
            known = ", ".join(choices) or "none configured"
            raise DeskError("invalid", f"no template {name!r} in the tenant's handoff templates ({known})")
        if len(parameters) != template.parameters:
            raise DeskError("invalid", f"template {name} takes {template.parameters} parameters, not {len(parameters)}")
        if any(not p.strip() for p in parameters):
            raise DeskError("invalid", "template parameters cannot be empty")
        summary = await self._writable(tenant_name, handoff_id, agent)
        command_id = f"{COMMAND_PREFIX}{handoff_id}:a:{_key(key)}"
        command = self._command(tenant, summary, command_id, "agent", agent)
        command.template.CopyFrom(
            outbound_pb2.OutTemplate(name=template.name, language=template.language, body_parameters=list(parameters))
        )
        await bus.publish(self._js, catalogue.outbound_subject(tenant_name, summary.contact), command, command_id)
        shown = template.text
        for index, value in enumerate(parameters, start=1):
            shown = shown.replace(f"{{{{{index}}}}}", value)
        extra = {"template": name, "text": shown}
        return await self._sent(summary, agent, command_id, "template", shown, "template", extra)

    async def resolve(self, tenant_name: str, handoff_id: int, actor: str, message: str | None = None) -> Summary:
        """Hand the conversation back to the bot, with the agent's closing message or the tenant's."""
        tenant = self._tenant(tenant_name)
        summary = await self.get(tenant_name, handoff_id)
        if summary.status == HANDOFF_RESOLVED:
            raise DeskError("conflict", "the conversation is resolved already")
        if summary.agent not in (None, actor) and actor != SYSTEM:
            raise DeskError("conflict", f"the conversation is {summary.agent}'s; they or an admin resolve it")
        now = datetime.now(UTC)
        closing = (message or "").strip() or tenant.spec.handoff.closing_message
        if message and message.strip() and not summary.window_open(now):
            raise DeskError("window_closed", "the customer's 24-hour window is closed: resolve without a message")
        return await self._close(tenant, summary, actor, "agent", closing if summary.window_open(now) else None)

    async def note(self, tenant_name: str, handoff_id: int, agent: str, text: str) -> Entry:
        """A private note: agents see it, the customer never does."""
        text = text.strip()
        if not text or len(text) > 4096:
            raise DeskError("invalid", "a note has 1 to 4096 characters")
        summary = await self.get(tenant_name, handoff_id)
        async with self._engine.begin() as conn:
            event_id = await self._log(conn, summary, "note", agent, text=text)
        entry = Entry(f"event:{event_id}", datetime.now(UTC), "note", text, author=agent)
        await self._activity(summary, "note", [entry])
        return entry

    async def set_labels(self, tenant_name: str, handoff_id: int, agent: str, labels: Sequence[str]) -> Summary:
        allowed = set(self._tenant(tenant_name).spec.handoff.labels)
        unknown = sorted(set(labels) - allowed)
        if unknown:
            raise DeskError("invalid", f"unknown labels {unknown}; the tenant's labels are {sorted(allowed)}")
        summary = await self.get(tenant_name, handoff_id)
        chosen = sorted(set(labels))
        async with self._engine.begin() as conn:
            await conn.execute(update(Handoff).where(Handoff.id == handoff_id).values(labels=chosen))
            await self._log(conn, summary, "labels", agent, data={"labels": chosen})
        after = await self.get(tenant_name, handoff_id)
        await self._activity(after, "labels")
        return after

    async def set_priority(self, tenant_name: str, handoff_id: int, agent: str, priority: int) -> Summary:
        summary = await self.get(tenant_name, handoff_id)
        async with self._engine.begin() as conn:
            await conn.execute(update(Handoff).where(Handoff.id == handoff_id).values(priority=priority))
            await self._log(conn, summary, "priority", agent, data={"priority": priority})
        after = await self.get(tenant_name, handoff_id)
        await self._activity(after, "priority")
        return after

    # --- reading ---

    async def conversations(
        self, tenant: str, state: State | None = None, agent: str | None = None, limit: int = 200
    ) -> list[Summary]:
        """Open conversations (or those in `state`), highest priority and longest waiting first."""
        query = select(Handoff).where(Handoff.tenant == tenant)
        if state is not None:
            query = query.where(Handoff.status == state)
        else:
            query = query.where(Handoff.status != HANDOFF_RESOLVED)
        if agent is not None:
            query = query.where(Handoff.agent == agent)
        if state == HANDOFF_RESOLVED:
            query = query.order_by(Handoff.resolved_at.desc())
        else:
            query = query.order_by(Handoff.priority.desc(), Handoff.requested_at, Handoff.id)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query.limit(limit))).all()
            windows = await self._windows(conn, tenant, [row.contact for row in rows])
        return [_summary(row, windows.get(row.contact)) for row in rows]

    async def get(self, tenant: str, handoff_id: int) -> Summary:
        """One handoff of this tenant; another tenant's is as missing as one that never was."""
        async with self._engine.connect() as conn:
            row = await self._row(conn, tenant, handoff_id)
            windows = await self._windows(conn, tenant, [row.contact])
        return _summary(row, windows.get(row.contact))

    async def current(self, tenant: str, contact: str) -> Summary | None:
        """The contact's open handoff, if any."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(Handoff).where(
                        Handoff.tenant == tenant, Handoff.contact == contact, Handoff.status != HANDOFF_RESOLVED
                    )
                )
            ).first()
            if row is None:
                return None
            windows = await self._windows(conn, tenant, [contact])
        return _summary(row, windows.get(contact))

    async def detail(self, tenant: str, handoff_id: int) -> Detail:
        """The handoff, the contact's recent messages (bot turns marked) and the handoff's timeline."""
        summary = await self.get(tenant, handoff_id)
        async with self._engine.connect() as conn:
            messages = (
                await conn.execute(
                    select(Message)
                    .where(Message.tenant == tenant, Message.contact == summary.contact, Message.type.is_not(None))
                    .order_by(Message.created_at.desc(), Message.id.desc())
                    .limit(self._max_transcript)
                )
            ).all()
            events = (
                await conn.execute(
                    select(HandoffEvent).where(HandoffEvent.handoff_id == handoff_id).order_by(HandoffEvent.id)
                )
            ).all()
        sent = [e for e in events if e.kind in ("reply", "template")]
        authors = {e.data.get("command_id"): e.actor for e in sent}
        # A template's row says only its name; the agent saw its words with the parameters filled in.
        shown = {e.data["command_id"]: e.data["text"] for e in sent if "text" in e.data}
        # Meta stamps customers' messages to the second; the gateway's time orders them against ours.
        ordered = sorted(messages, key=lambda row: (_aware(row.received_at) or row.created_at, row.id))
        transcript = [_entry(row, authors, shown) for row in ordered]
        timeline = [
            Entry(f"event:{e.id}", e.at, "note" if e.kind == "note" else "event", _describe_event(e), author=e.actor)
            for e in events
            if e.kind not in ("forwarded", "reply", "template")
        ]
        return Detail(summary, transcript, timeline)

    async def figures(self, tenant: str) -> dict[str, Any]:
        """Queue length, oldest wait and agents online, as the inbox header and `handoff list` show them."""
        now = datetime.now(UTC)
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(func.count(), func.min(Handoff.requested_at)).where(
                        Handoff.tenant == tenant, Handoff.status == HANDOFF_WAITING
                    )
                )
            ).one()
        oldest = _aware(row[1])
        return {
            "waiting": int(row[0]),
            "oldest_wait_s": (now - oldest).total_seconds() if oldest else 0.0,
            "agents_online": len(await self.online_agents(tenant)),
        }

    # --- presence and assignment ---

    async def touch(self, tenant: str, agent: str) -> None:
        """The agent's inbox is open: they count as online for the presence window."""
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        await self._redis.zadd(keys.agents_online_key(tenant), {agent: now_ms})

    async def leave(self, tenant: str, agent: str) -> None:
        await self._redis.zrem(keys.agents_online_key(tenant), agent)

    async def online_agents(self, tenant: str) -> list[str]:
        since = int((datetime.now(UTC).timestamp() - self._presence_window_s) * 1000)
        members = await self._redis.zrangebyscore(keys.agents_online_key(tenant), since, "+inf")
        return sorted(str(member) for member in members)

    async def assign_waiting(self, tenant: BotTenant) -> int:
        """Give waiting conversations to online agents in turn, each up to the tenant's cap; how many were given."""
        spec = tenant.spec.handoff
        if not spec.auto_assign:
            return 0
        online = await self.online_agents(tenant.name)
        if not online:
            return 0
        waiting = await self.conversations(tenant.name, "waiting")
        if not waiting:
            return 0
        holding = await self._open_counts(tenant.name)
        last = await self._redis.get(keys.round_robin_key(tenant.name))
        # Start after the agent assigned last, so that every online agent gets their turn.
        start = next((i + 1 for i, agent in enumerate(online) if agent == last), 0)
        order = online[start:] + online[:start]
        given = 0
        for summary in waiting:
            candidates = [agent for agent in order if holding[agent] < spec.max_open_per_agent]
            if not candidates:
                break
            agent = candidates[0]
            if await self._assign(summary, agent, actor=SYSTEM):
                holding[agent] += 1
                given += 1
                await self._redis.set(keys.round_robin_key(tenant.name), agent)
                order = [a for a in order if a != agent] + [agent]
        return given

    async def _assign(self, summary: Summary, agent: str, actor: str) -> bool:
        """Waiting -> assigned to the agent, unless another replica or agent was first."""
        # The agent's inactivity clock starts now, not when the customer last wrote.
        now = datetime.now(UTC)
        async with self._engine.begin() as conn:
            changed = await conn.execute(
                update(Handoff)
                .where(Handoff.id == summary.id, Handoff.status == HANDOFF_WAITING)
                .values(status=HANDOFF_ASSIGNED, agent=agent, assigned_at=now, last_activity_at=now)
            )
            if not changed.rowcount:
                return False
            await self._log(conn, summary, "assigned", actor, data={"agent": agent})
        after = await self.get(summary.tenant, summary.id)
        await self._activity(after, "assigned")
        tenant = self._registry.by_name(summary.tenant)
        if tenant is not None:
            await self._notify(tenant, after, "assigned", f"{summary.id}:assigned:{agent}:{uuid.uuid4().hex}")
        return True

    # --- the sweep: every replica, every few seconds ---

    async def sweep(self) -> None:
        """Owner keys back after Redis lost them, inactivity timeouts, assignment, the queue gauges."""
        await self._restore_owners()
        now = datetime.now(UTC)
        for tenant in self._registry.all():
            await self._time_out(tenant, now)
            await self.assign_waiting(tenant)
        await self._refresh_gauges(now)

    async def _restore_owners(self) -> None:
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(Handoff.tenant, Handoff.contact, Handoff.request_id).where(
                        Handoff.status != HANDOFF_RESOLVED
                    )
                )
            ).all()
        if not rows:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for row in rows:
                pipe.set(keys.ContactKeys(row.tenant, row.contact).owner, row.request_id, nx=True)
            restored = [row for row, result in zip(rows, await pipe.execute(), strict=True) if result]
        for row in restored:
            # Resolved or erased between the read and the write: the key must not outlive the handoff.
            if await self.current(row.tenant, row.contact) is None:
                await self._redis.delete(keys.ContactKeys(row.tenant, row.contact).owner)
        if restored:
            log.warning("owner keys restored from the store (Redis lost them)", count=len(restored))

    async def _time_out(self, tenant: BotTenant, now: datetime) -> None:
        spec = tenant.spec.handoff
        cutoff = now - timedelta(minutes=spec.inactivity_minutes)
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(Handoff).where(
                        Handoff.tenant == tenant.name,
                        Handoff.status != HANDOFF_RESOLVED,
                        Handoff.last_activity_at < cutoff,
                    )
                )
            ).all()
        for row in rows:
            summary = _summary(row)
            if spec.on_inactivity == "queue" and summary.status == HANDOFF_ASSIGNED:
                async with self._engine.begin() as conn:
                    changed = await conn.execute(
                        update(Handoff)
                        # Assigned still: a handoff resolved since the read above stays resolved.
                        .where(
                            Handoff.id == summary.id,
                            Handoff.status == HANDOFF_ASSIGNED,
                            Handoff.last_activity_at < cutoff,
                        )
                        .values(status=HANDOFF_WAITING, agent=None, assigned_at=None, last_activity_at=now)
                    )
                    if changed.rowcount:
                        await self._log(conn, summary, "timeout", SYSTEM, data={"to": "queue", "from": summary.agent})
                if changed.rowcount:
                    after = await self.get(tenant.name, summary.id)
                    await self._activity(after, "timeout")
                    await self._notify(tenant, after, "timeout", f"{summary.id}:timeout:{now.timestamp():.0f}")
            elif spec.on_inactivity == "bot" and (
                summary.status == HANDOFF_ASSIGNED
                or (hours.is_open(spec.business_hours, cutoff) and hours.is_open(spec.business_hours, now))
            ):
                # A waiting customer told "a person will answer when we open" keeps their place overnight:
                # their wait times out only once the agents have had the whole inactivity time open.
                try:
                    await self._close(tenant, summary, SYSTEM, "timeout", None, idle_before=cutoff)
                except DeskError:
                    continue  # someone wrote or resolved it meanwhile
                await self._notify(tenant, summary, "timeout", f"{summary.id}:timeout")

    async def _refresh_gauges(self, now: datetime) -> None:
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(Handoff.tenant, func.count(), func.min(Handoff.requested_at))
                    .where(Handoff.status == HANDOFF_WAITING)
                    .group_by(Handoff.tenant)
                )
            ).all()
        waiting = {row[0]: (int(row[1]), _aware(row[2])) for row in rows}
        for tenant in self._registry.all():
            count, oldest = waiting.get(tenant.name, (0, None))
            metrics.HANDOFF_QUEUE.labels(tenant.name).set(count)
            metrics.HANDOFF_OLDEST_WAIT.labels(tenant.name).set((now - oldest).total_seconds() if oldest else 0.0)
            metrics.AGENTS_ONLINE.labels(tenant.name).set(len(await self.online_agents(tenant.name)))

    # --- internals ---

    async def _close(
        self,
        tenant: BotTenant,
        summary: Summary,
        actor: str,
        resolution: str,
        closing: str | None,
        idle_before: datetime | None = None,
    ) -> Summary:
        now = datetime.now(UTC)
        condition = [Handoff.id == summary.id, Handoff.status != HANDOFF_RESOLVED]
        if idle_before is not None:
            condition.append(Handoff.last_activity_at < idle_before)
        if closing:
            # Before the owner key goes: the bot's next answer must come after it.
            command_id = f"{COMMAND_PREFIX}{summary.id}:a:closing"
            await self._send(tenant, summary, command_id, closing, "agent", actor)
        async with self._engine.begin() as conn:
            changed = await conn.execute(
                update(Handoff)
                .where(and_(*condition))
                .values(status=HANDOFF_RESOLVED, resolved_at=now, resolution=resolution, resolved_by=actor)
            )
            if not changed.rowcount:
                raise DeskError("conflict", "the conversation changed meanwhile; reload it")
            data: dict[str, Any] = {"resolution": resolution}
            if closing:
                data["command_id"] = f"{COMMAND_PREFIX}{summary.id}:a:closing"
                await self._log(conn, summary, "reply", actor, data={"command_id": data["command_id"]})
            await self._log(conn, summary, "resolved", actor, data=data)
        await self._redis.delete(keys.ContactKeys(tenant.name, summary.contact).owner)
        metrics.HANDOFF_RESOLVE_SECONDS.labels(tenant.name, resolution).observe(
            (now - summary.requested_at).total_seconds()
        )
        after = await self.get(tenant.name, summary.id)
        await self._activity(after, "resolved")
        if resolution != "timeout":
            await self._notify(tenant, after, "resolved", f"{summary.id}:resolved")
        return after

    async def _writable(self, tenant: str, handoff_id: int, agent: str) -> Summary:
        """The handoff an agent may write in: theirs, or waiting (writing claims it)."""
        summary = await self.get(tenant, handoff_id)
        if summary.status == HANDOFF_RESOLVED:
            raise DeskError("conflict", "the conversation is resolved; take it again to write")
        if summary.status == HANDOFF_WAITING:
            return await self.claim(tenant, handoff_id, agent)
        if summary.agent != agent:
            raise DeskError("conflict", f"the conversation is {summary.agent}'s; ask them to transfer it")
        return summary

    async def _sent(
        self,
        summary: Summary,
        agent: str,
        command_id: str,
        kind: str,
        text: str,
        metric_kind: str,
        extra: dict[str, Any] | None = None,
    ) -> Entry:
        now = datetime.now(UTC)
        async with self._engine.begin() as conn:
            repeated = await _logged_before(conn, summary.id, ("reply", "template"), "command_id", command_id)
            if not repeated:
                await self._log(conn, summary, kind, agent, data={"command_id": command_id, **(extra or {})})
                values: dict[str, Any] = {"last_activity_at": now}
                if summary.first_reply_at is None:
                    values["first_reply_at"] = now
                await conn.execute(update(Handoff).where(Handoff.id == summary.id).values(**values))
        entry = Entry(command_id, now, "agent", text, author=agent)
        if not repeated:
            metrics.HANDOFF_AGENT_MESSAGES.labels(summary.tenant, metric_kind, "queued").inc()
            if summary.first_reply_at is None:
                metrics.HANDOFF_FIRST_REPLY_SECONDS.labels(summary.tenant).observe(
                    (now - summary.requested_at).total_seconds()
                )
            await self._activity(summary, "reply", [entry])
        return entry

    async def _check_capacity(self, tenant: BotTenant, agent: str) -> None:
        cap = tenant.spec.handoff.max_open_per_agent
        holding = (await self._open_counts(tenant.name))[agent]
        if holding >= cap:
            raise DeskError("conflict", f"{agent} holds {holding} conversations, the most this tenant allows ({cap})")

    async def _open_counts(self, tenant: str) -> Counter[str]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(Handoff.agent, func.count())
                .where(Handoff.tenant == tenant, Handoff.status == HANDOFF_ASSIGNED)
                .group_by(Handoff.agent)
            )
            return Counter({str(row[0]): int(row[1]) for row in rows})

    async def _expected_wait(self, tenant: BotTenant) -> float | None:
        """The median wait of the latest assignments, times the queue ahead per online agent."""
        async with self._engine.connect() as conn:
            recent = (
                await conn.execute(
                    select(Handoff.requested_at, Handoff.assigned_at)
                    .where(Handoff.tenant == tenant.name, Handoff.assigned_at.is_not(None))
                    .order_by(Handoff.assigned_at.desc())
                    .limit(RECENT_ASSIGNMENTS)
                )
            ).all()
        waits = [(_aware(r.assigned_at) - _aware(r.requested_at)).total_seconds() for r in recent]  # type: ignore[operator]
        base = statistics.median(waits) if waits else DEFAULT_EXPECTED_WAIT_S
        figures = await self.figures(tenant.name)
        per_agent = figures["waiting"] / max(1, figures["agents_online"])
        return float(max(base, 0.0) * max(1.0, per_agent))

    async def _windows(self, conn: AsyncConnection, tenant: str, contacts: Sequence[str]) -> dict[str, datetime]:
        """The store's last customer message per contact (the recorder's view of the 24-hour window)."""
        if not contacts:
            return {}
        rows = await conn.execute(
            select(Contact.wa_id, Contact.last_customer_message_at).where(
                Contact.tenant == tenant, Contact.wa_id.in_(set(contacts))
            )
        )
        return {row.wa_id: row.last_customer_message_at for row in rows if row.last_customer_message_at is not None}

    async def _row(self, conn: AsyncConnection, tenant: str, handoff_id: int) -> Row[Any]:
        row = (await conn.execute(select(Handoff).where(Handoff.tenant == tenant, Handoff.id == handoff_id))).first()
        if row is None:
            raise DeskError("not_found", f"no conversation {handoff_id} in tenant {tenant}")
        return row

    async def _log(
        self,
        conn: AsyncConnection,
        summary: Summary,
        kind: str,
        actor: str,
        text: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> int:
        event_id = await conn.scalar(
            insert(HandoffEvent)
            .values(
                handoff_id=summary.id,
                tenant=summary.tenant,
                contact=summary.contact,
                at=datetime.now(UTC),
                kind=kind,
                actor=actor,
                text=text,
                data=data or {},
            )
            .returning(HandoffEvent.id)
        )
        return int(event_id or 0)

    def _tenant(self, name: str) -> BotTenant:
        tenant = self._registry.by_name(name)
        if tenant is None:
            raise DeskError("not_found", f"no tenant {name} in the registry")
        return tenant

    def _command(
        self, tenant: BotTenant, summary: Summary, command_id: str, sender: str, agent: str
    ) -> outbound_pb2.OutboundCommand:
        command = outbound_pb2.OutboundCommand(
            command_id=command_id,
            tenant=tenant.name,
            contact=summary.contact,
            created_at=bus.now_timestamp(),
            sender=sender,
            agent=agent,
        )
        if summary.window_closes_at is not None:
            command.window_closes_at.FromDatetime(summary.window_closes_at)
        return command

    async def _send(
        self, tenant: BotTenant, summary: Summary, command_id: str, text: str, sender: str, agent: str
    ) -> None:
        command = self._command(tenant, summary, command_id, sender, agent)
        command.text.CopyFrom(outbound_pb2.OutText(body=text))
        await bus.publish(self._js, catalogue.outbound_subject(tenant.name, summary.contact), command, command_id)

    async def _notify(self, tenant: BotTenant, summary: Summary, event: str, notification_id: str) -> None:
        notify = tenant.spec.handoff.notify
        if notify is None or event not in notify.events:
            return
        who = summary.customer_name or "a customer"
        link = f"{self._public_url}/inbox/#/c/{summary.id}" if self._public_url else ""
        lines = {
            "requested": f"New conversation waiting ({summary.reason}): {who} {mask_phone(summary.contact)}",
            "message": f"{who} {mask_phone(summary.contact)} wrote again",
            "assigned": f"Conversation with {who} assigned to {summary.agent}",
            "transferred": f"Conversation with {who} is now {summary.agent or 'back in the queue'}",
            "resolved": f"Conversation with {who} resolved by {summary.resolved_by}",
            "timeout": f"Conversation with {who} timed out after {tenant.spec.handoff.inactivity_minutes} min idle",
        }
        notification = handoff_pb2.AgentNotification(
            notification_id=notification_id,
            tenant=tenant.name,
            contact=summary.contact,
            handoff_id=summary.id,
            event=event,
            text=f"{lines[event]} {link}".strip(),
            agent=summary.agent or "",
            at=bus.now_timestamp(),
        )
        subject = catalogue.notification_subject(tenant.name, summary.contact)
        await bus.publish(self._js, subject, notification, notification_id)

    async def _activity(self, summary: Summary, event: str, entries: Sequence[Entry] = ()) -> None:
        """Tell every replica's open inboxes of this tenant; best effort (an inbox re-reads on reconnect)."""
        payload = {"event": event, "conversation": summary.as_json(), "entries": [e.as_json() for e in entries]}
        try:
            await self._nc.publish(catalogue.inbox_subject(summary.tenant), json.dumps(payload).encode())
        except Exception as error:  # NATS away: the inbox's next refresh shows the change
            log.warning("inbox activity not published", tenant=summary.tenant, error=type(error).__name__)


async def _logged_before(conn: AsyncConnection, handoff_id: int, kinds: tuple[str, ...], key: str, value: str) -> bool:
    """The handoff's timeline has an event of these kinds for this turn or command: a redelivery adds none.

    Read in Python, not in SQL: JSON paths differ between PostgreSQL and SQLite, and a handoff has few events.
    """
    seen = await conn.scalars(
        select(HandoffEvent.data).where(HandoffEvent.handoff_id == handoff_id, HandoffEvent.kind.in_(kinds))
    )
    return any(data.get(key) == value for data in seen)


def _same_agent(agent: str | None) -> Any:
    return Handoff.agent.is_(None) if agent is None else Handoff.agent == agent


def _not_waiting(summary: Summary) -> str:
    if summary.status == HANDOFF_ASSIGNED:
        return f"the conversation is {summary.agent}'s already"
    return f"the conversation is {summary.status}"


def _key(key: str | None) -> str:
    """An idempotency key as a command id part: the client's (a retried send is one message), else a new one."""
    if key is None:
        return uuid.uuid4().hex
    cleaned = "".join(c for c in key if c.isalnum() or c in "-_")[:64]
    if not cleaned:
        raise DeskError("invalid", "the idempotency key needs letters, digits, '-' or '_'")
    return cleaned


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _time(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC) if stamp.seconds or stamp.nanos else datetime.now(UTC)


def _summary(row: Row[Any], store_last_customer: datetime | None = None) -> Summary:
    candidates = [t for t in (_aware(row.last_customer_at), _aware(store_last_customer)) if t is not None]
    last_customer = max(candidates) if candidates else None
    return Summary(
        id=row.id,
        tenant=row.tenant,
        contact=row.contact,
        request_id=row.request_id,
        customer_name=row.customer_name,
        status=row.status,
        reason=row.reason,
        detail=row.detail,
        priority=row.priority,
        agent=row.agent,
        labels=list(row.labels or []),
        requested_at=_aware(row.requested_at) or datetime.now(UTC),
        assigned_at=_aware(row.assigned_at),
        first_reply_at=_aware(row.first_reply_at),
        resolved_at=_aware(row.resolved_at),
        resolution=row.resolution,
        resolved_by=row.resolved_by,
        last_customer_at=last_customer,
        last_activity_at=_aware(row.last_activity_at) or datetime.now(UTC),
    )


def _entry(row: Row[Any], authors: dict[str, str], shown: dict[str, str]) -> Entry:
    if row.direction == INBOUND:
        return Entry(row.wamid or str(row.id), row.created_at, "customer", row.text or "", seq=row.stream_seq)
    command_id = row.command_id or ""
    role: Literal["bot", "agent", "system"] = "bot"
    if command_id.startswith(COMMAND_PREFIX):
        role = "system" if command_id.endswith(":notice") else "agent"
    text = shown.get(command_id, row.text or "")
    return Entry(command_id or str(row.id), row.created_at, role, text, authors.get(command_id), row.status)


def _describe_event(event: Row[Any]) -> str:
    data = event.data or {}
    match event.kind:
        case "requested":
            return f"handed over ({data.get('reason')}{': ' + data['detail'] if data.get('detail') else ''})"
        case "assigned":
            return f"assigned to {data.get('agent')}"
        case "transferred":
            return f"transferred from {data.get('from')} to {data.get('to')}"
        case "requeued":
            return f"put back in the queue by {event.actor}"
        case "note":
            return str(event.text or "")
        case "labels":
            return f"labels: {', '.join(data.get('labels', [])) or 'none'}"
        case "priority":
            return f"priority set to {data.get('priority')}"
        case "timeout":
            return f"timed out, back to the {data.get('to', 'bot')}"
        case "resolved":
            return f"resolved ({data.get('resolution')}) by {event.actor}"
    return str(event.kind)
