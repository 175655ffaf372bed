"""The conversation engine: debounce, per-contact ordering and exactly-once replies.

How it works (docs/architecture.md has the why; this package's README says which module does what):

* The inbound stream is the buffer. A contact's pending messages are the ZF_INBOUND messages
  on its subject after its cursor (the stream sequence up to which everything is settled).
  Turns are read from the stream in sequence order, so arrival order is JetStream's order.
* Ingest (any replica) records the arrival in Redis — the debounce deadline in a due set,
  sliding by the window and capped by the maximum wait — and *holds* the JetStream message
  unacknowledged, sending in-progress heartbeats.
* The closer (every replica) takes due contacts, locks the contact (one turn at a time per
  contact, across replicas), writes the turn's range to an in-flight record, asks the
  responder, publishes the outbound commands with dedup ids derived from the turn id, then the
  turn event, then advances the cursor. Only then are the held messages acknowledged: by the
  replica that answered, and by any other holder when it sees the turn event.
* A crash anywhere leaves messages unacknowledged: they are redelivered, and the re-run of an
  in-flight turn has the same id, so its publishes collapse (JetStream dedup, 2 min) and the
  turn key (1 h by default) makes it skip the responder entirely.

A tenant served by a workload of its own (`BotTenant.served_by_dedicated_workload`) has its due
set of its own, read only by its replicas (`ConversationSettings.dedicated_tenant`); every other
tenant's contacts wait in the shared due set, read by the shared replicas. Ingest still runs
everywhere: the shared `conversation` consumer takes every tenant's messages, and a dedicated
replica's consumer its tenant's again (the second ingest of a message holds it too), so a tenant
changing sides never leaves a message unread, and each message's due entry goes where the
registry says at that moment. The shared replicas move what a tenant's own due set still holds
once the tenant is no longer dedicated: on the registry's change, and on a timer for entries its
replicas wrote late.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.context import Context
from redis.asyncio import Redis

from zapflow.conversation import handoff, planning
from zapflow.conversation.closer import Closer
from zapflow.conversation.history import HistoryCache, HistorySource
from zapflow.conversation.ledger import HeldMessages
from zapflow.conversation.optout import OPT_OUT_ACTION
from zapflow.conversation.planning import PendingTurn
from zapflow.conversation.reader import TurnReader
from zapflow.conversation.responder import Answer, Responder
from zapflow.conversation.settings import ConversationSettings
from zapflow.conversation.turnstate import Answered, DueSets, TurnState, read_by
from zapflow.platform import bus, catalogue, metrics
from zapflow.platform.keys import ContactKeys
from zapflow.platform.logging import get_logger
from zapflow.platform.telemetry import extract_context
from zapflow.tenants.model import BotTenant
from zapflow.tenants.registry import TenantRegistry
from zapflow.v1 import inbound_pb2, turn_pb2

log = get_logger(__name__)
tracer = trace.get_tracer(__name__)

# A responder slower than this may have been overtaken by an agent taking the conversation.
OWNER_RECHECK_AFTER_S = 0.005


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
        self._registry = registry
        self._responders = responders
        self._settings = settings
        self._history = HistoryCache(redis, history_store, settings.history_max_turns, settings.history_ttl_s)
        self._state = TurnState(redis, self._history, read_by(settings.dedicated_tenant))
        self._reader = TurnReader(js, self._state, settings.max_turn_messages)
        self._held = HeldMessages()
        self._closer = Closer(self._state, settings, self._run_turn)
        self._semaphores: dict[str, tuple[int, asyncio.Semaphore]] = {}
        self._stopping = asyncio.Event()
        self._heartbeats: asyncio.Task[None] | None = None
        self._turn_events: Subscription | None = None
        # Shared replicas only: tenants whose own due set may need moving into the shared one.
        self._sweeps: asyncio.Task[None] | None = None
        self._undedicated: set[str] = set()
        self._registry_changed = asyncio.Event()

    # --- lifecycle ---

    async def start(self) -> None:
        # A dedicated replica holds its tenant's messages only: their turn events are all it needs.
        turns = catalogue.events_of(catalogue.TURN, self._settings.dedicated_tenant or "*")
        self._turn_events = await self._nc.subscribe(turns, cb=self._on_turn_event)
        self._closer.start()
        self._heartbeats = asyncio.create_task(self._heartbeat(), name="engine-heartbeat")
        if self._settings.dedicated_tenant is None:
            self._registry.on_change(self._on_tenant_change)
            self._sweeps = asyncio.create_task(self._sweep_undedicated(), name="engine-undedicated-sweep")

    async def stop(self) -> None:
        self._stopping.set()
        self._registry_changed.set()  # wakes the sweep loop, which then sees it is stopping
        await self._closer.stop()
        for task in (self._heartbeats, self._sweeps):
            if task is not None:
                await task
        if self._turn_events is not None:
            with contextlib.suppress(Exception):  # shutting down: the connection may be closed already
                await self._turn_events.unsubscribe()

    # --- ingest: the inbound consumer's handler ---

    async def ingest(self, message: inbound_pb2.InboundMessage, msg: Msg) -> bus.Disposition:
        tenant = self._registry.by_name(message.tenant)
        if tenant is None:
            raise bus.RetryLater(f"tenant {message.tenant} is not in the registry (yet)")
        keys = ContactKeys(message.tenant, message.contact)
        seq = msg.metadata.sequence.stream
        debounce, message_key_ttl_s = tenant.spec.debounce, self._message_ttl(tenant)
        due = self._due_sets(keys.tenant)
        # Meta's timestamp of the message (when the customer sent it) opens the window, not the webhook's arrival.
        sent_at_s = (message.sent_at if message.HasField("sent_at") else message.received_at).seconds
        state = await self._state.arrive(keys, due, message.wamid, seq, sent_at_s, debounce, message_key_ttl_s)
        if state == "no_cursor":
            # Rare (a new contact, or Redis lost its data): rebuild it off the hot path, then retry.
            await self._reader.cursor(keys)
            state = await self._state.arrive(keys, due, message.wamid, seq, sent_at_s, debounce, message_key_ttl_s)
        if state in ("duplicate", "settled"):
            # A duplicate is counted once, by the turn that skips it in the stream.
            return bus.Disposition.ACK
        self._held.add(keys, seq, msg)
        return bus.Disposition.HOLD

    # --- a turn: read, answer, publish, settle ---

    async def _run_turn(self, keys: ContactKeys, token: str) -> None:
        """The closer locked this contact: answer its next turn, then settle it and release the lock."""
        closed_at = time.perf_counter()
        closed_stamp = bus.now_timestamp()
        tenant = self._registry.by_name(keys.tenant)
        if tenant is None:
            # The lock expires and the contact is tried again, in case the registry is behind.
            metrics.ENGINE_FAILURES.labels("turn").inc()
            log.warning("due contact of an unknown tenant", tenant=keys.tenant)
            return
        pending = await self._reader.next_turn(keys, self._message_ttl(tenant), self._turn_ttl(tenant))
        answered = None
        if pending is not None:
            parent, links = _trace_context(pending)
            with tracer.start_as_current_span("conversation turn", context=parent, links=links) as span:
                span.set_attribute("zapflow.tenant", keys.tenant)
                span.set_attribute("zapflow.turn_id", pending.turn_id)
                answered = await self._answer(tenant, keys, pending, closed_at, closed_stamp)
        last_seq = pending.last_seq if pending else None
        due = self._due_sets(keys.tenant)
        settled = await self._state.settle(keys, token, last_seq, answered, tenant.spec.debounce, due)
        await self._held.acknowledge_through(keys, settled)

    async def _answer(
        self, tenant: BotTenant, keys: ContactKeys, pending: PendingTurn, closed_at: float, closed_stamp: Timestamp
    ) -> Answered | None:
        """Publish the turn's replies and its event; None when the turn was answered before."""
        prior = await self._state.before_answering(keys, pending.turn_id)
        if prior.answered:
            metrics.DUPLICATES_DROPPED.labels(keys.tenant, "turn_key").inc()
            return None
        subject = catalogue.outbound_subject(keys.tenant, keys.contact)
        messages = planning.to_answer(pending)
        answer, streaks, event = planning.SILENT, None, None
        if messages:
            owner, streaks = prior.owner, prior.streaks
            ask = None
            if owner is None:
                # A message past its window, or an opt-out, is not a question for the responder.
                bypass = planning.not_for_the_responder(tenant, pending, datetime.now(UTC), prior.opted_out)
                if bypass is not None:
                    answer = bypass
                else:
                    ask = handoff.asked_by_customer(tenant.spec.handoff, messages)
            if owner is None and ask is None and answer is planning.SILENT:
                receipt = planning.read_receipt(pending, tenant, keys.contact, bus.now_timestamp())
                if receipt is not None:
                    await bus.publish(self._js, subject, receipt, receipt.command_id)
                asked_at = time.perf_counter()
                answer = await self._respond(tenant, keys, pending)
                ask, streaks = handoff.after_answer(tenant.spec.handoff, tenant.spec.bot.responder, answer, streaks)
                if ask is None and time.perf_counter() - asked_at > OWNER_RECHECK_AFTER_S:
                    # An agent may have taken the conversation while the responder worked (a model, a
                    # search): humans win, and the messages go to them. A quicker responder leaves no
                    # wider window than the publish itself, which egress guards.
                    owner = await self._state.owner(keys)
            if ask is not None:
                owner = await self._state.hand_over(keys, pending.turn_id)
                if owner == pending.turn_id:
                    answer = Answer(planning.HANDOFF_OUTCOME, (), rule=answer.rule, actions=answer.actions)
                else:
                    ask = None  # someone had it already: the messages go to them
            if owner is not None:
                if ask is None:
                    answer, streaks = planning.forwarded(tenant, messages), None
                event = planning.handoff_event(pending, keys.tenant, keys.contact, owner, ask, bus.now_timestamp())
        plan = planning.plan_turn(pending, tenant, keys.contact, answer, closed_stamp, bus.now_timestamp())
        for command in plan.commands:
            await bus.publish(self._js, subject, command, command.command_id)
        if event is not None:
            handoff_subject = catalogue.handoff_subject(keys.tenant, keys.contact)
            await bus.publish(self._js, handoff_subject, event, f"{pending.turn_id}:handoff")
        # Answered means published: the time after the replies went out.
        plan.turn.answered_at.GetCurrentTime()
        await bus.publish(self._js, catalogue.turn_subject(keys.tenant, keys.contact), plan.turn, pending.turn_id)
        if messages:
            metrics.TURN_LATENCY_SECONDS.labels(keys.tenant).observe(time.perf_counter() - closed_at)
            metrics.TURN_MESSAGES.labels(keys.tenant).observe(len(messages))
            metrics.TURNS.labels(keys.tenant, answer.outcome).inc()
        log.info("turn answered", tenant=keys.tenant, turn_id=pending.turn_id, outcome=answer.outcome)
        opted_out = OPT_OUT_ACTION in answer.actions
        return Answered(pending.turn_id, self._turn_ttl(tenant), plan.exchange, streaks, opted_out)

    async def _respond(self, tenant: BotTenant, keys: ContactKeys, pending: PendingTurn) -> Answer:
        bot = tenant.spec.bot
        responder = self._responders[bot.responder]
        history = await self._history.last_turns(keys, bot.openai.history_turns if bot.openai else 0)
        turn = planning.responder_input(pending, tenant, keys.contact, history)
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

    def _message_ttl(self, tenant: BotTenant) -> int:
        return tenant.spec.idempotency.message_key_ttl_seconds or self._settings.message_key_ttl_s

    def _turn_ttl(self, tenant: BotTenant) -> int:
        return tenant.spec.idempotency.turn_key_ttl_seconds or self._settings.turn_key_ttl_s

    # --- held messages: acknowledged on other replicas' turns, heartbeats meanwhile ---

    async def _on_turn_event(self, msg: Msg) -> None:
        """Another replica answered a turn: acknowledge the messages of it that this one holds."""
        try:
            turn = turn_pb2.Turn.FromString(msg.data)
        except DecodeError as error:
            metrics.ENGINE_FAILURES.labels("turn_event").inc()
            log.warning("undecodable turn event", subject=msg.subject, error=str(error))
            return
        await self._held.acknowledge_through(ContactKeys(turn.tenant, turn.contact), turn.last_inbound_seq)

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
            contacts = await self._held.keep_alive()
            by_due_set: dict[DueSets, list[ContactKeys]] = {}
            for keys in contacts:
                by_due_set.setdefault(self._due_sets(keys.tenant), []).append(keys)
            try:
                await self._state.rearm(by_due_set, int(time.time() * 1000))
            except Exception as error:  # Redis away: the next heartbeat tries again
                metrics.ENGINE_FAILURES.labels("rearm").inc()
                log.warning("re-arming held contacts' deadlines failed", contacts=len(contacts), error=str(error))

    # --- due sets: a tenant's own, or the shared one ---

    def _due_sets(self, tenant_name: str) -> DueSets:
        """Where the tenant's contacts wait for their turns, as the registry says now (the shared set if unknown)."""
        tenant = self._registry.by_name(tenant_name)
        return DueSets.of(tenant_name, tenant is not None and tenant.served_by_dedicated_workload)

    def _on_tenant_change(self, name: str, tenant: BotTenant | None) -> None:
        """The registry's listener: a tenant no longer dedicated (or removed) has its own due set moved at once."""
        if tenant is None or not tenant.served_by_dedicated_workload:
            self._undedicated.add(name)
            self._registry_changed.set()

    async def _sweep_undedicated(self) -> None:
        """Move the due sets of tenants no longer dedicated into the shared one, so the shared closers answer them.

        At once for a tenant the registry just changed (or removed); every sweep interval for every tenant
        not dedicated, for the entries a dedicated replica still running (or dying) wrote after that.
        """
        interval = self._settings.dedicated_sweep_interval_s
        next_sweep = time.monotonic()
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._registry_changed.wait(), timeout=max(next_sweep - time.monotonic(), 0))
            self._registry_changed.clear()
            if self._stopping.is_set():
                return
            changed, self._undedicated = self._undedicated, set()
            tenants = set(changed)
            if time.monotonic() >= next_sweep:
                tenants |= {t.name for t in self._registry.all() if not t.served_by_dedicated_workload}
                next_sweep = time.monotonic() + interval
            try:
                moved = await self._state.move_to_shared(tenants)
            except Exception as error:  # Redis away: the changed tenants are tried again at the next sweep
                self._undedicated |= changed
                metrics.ENGINE_FAILURES.labels("sweep").inc()
                log.warning("moving dedicated due sets into the shared one failed", error=str(error))
                continue
            if moved:
                log.info("pending turns of tenants no longer dedicated moved to the shared replicas", contacts=moved)


def _trace_context(pending: PendingTurn) -> tuple[Context | None, list[trace.Link]]:
    """Continue the trace of the turn's last message; link the others."""
    contexts = [extract_context(h) for h in pending.trace_headers]
    spans = [trace.get_current_span(c).get_span_context() for c in contexts]
    links = [trace.Link(s) for s in spans[:-1] if s.is_valid]
    return (contexts[-1] if contexts else None), links
