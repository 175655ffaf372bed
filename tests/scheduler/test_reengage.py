"""Re-engagement: scheduled by turns, moved or cancelled by the customer, sent inside WhatsApp's rules.

The timer's firing is tested in test_timers.py; here `on_due` is called as the timer consumer would
call it, at a moment of the test's clock, so that nothing waits hours.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.tenants import make_tenant
from zapflow.platform import bus, catalogue
from zapflow.platform.keys import ContactKeys
from zapflow.platform.redis import connect_redis
from zapflow.platform.settings import CoreSettings
from zapflow.scheduler.reengage import REENGAGE, Nudge, Reengagement
from zapflow.scheduler.timers import Fired, Timers
from zapflow.store.campaigns import CampaignStore
from zapflow.store.engine import create_engine
from zapflow.v1 import outbound_pb2, turn_pb2
from zapflow.v1.timer_pb2 import Timer

CONTACT = "5511988887777"
# Now: nats-server holds the nudges by its own clock, hours ahead of this; the handler's clock is the test's.
WROTE_AT = datetime.now(UTC).replace(microsecond=0)
UNRESOLVED: dict[str, Any] = {
    "name": "unresolved",
    "when": "unanswered",
    "afterHours": 4,
    "text": "Still there? Ask me again and I will try once more.",
    "template": {"name": "come_back", "language": "pt_BR", "bodyParameters": ["{name}"]},
}
RULES = {"reengagement": {"rules": [UNRESOLVED]}}


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Rig:
    reengagement: Reengagement
    clock: Clock
    tenant: str
    js: JetStreamContext
    redis: Redis
    database: AsyncEngine

    def contact(self) -> ContactKeys:
        return ContactKeys(self.tenant, CONTACT)

    async def customer_wrote(self, at: datetime) -> None:
        await self.redis.set(self.contact().window, int(at.timestamp()))

    async def turn(self, outcome: str) -> None:
        turn = turn_pb2.Turn(turn_id=f"in-{uuid.uuid4().hex[:6]}", tenant=self.tenant, contact=CONTACT, outcome=outcome)
        turn.started_at.FromDatetime(WROTE_AT)
        await self.reengagement.on_turn(turn, None)  # type: ignore[arg-type]

    async def waiting(self) -> Timer | None:
        """The contact's nudge as nats-server holds it."""
        subject = catalogue.timer_subject(REENGAGE, self.tenant, CONTACT)
        try:
            found = await self.js.get_last_msg(catalogue.TIMER_STREAM.name, subject)
        except NotFoundError:
            return None
        return Timer.FromString(found.data or b"")

    async def fire(self, timer: Timer, at: datetime) -> None:
        self.clock.now = at
        due = timer.due_at.ToDatetime(UTC)
        fired = Fired(timer.timer_id, timer.kind, timer.tenant, timer.key, due, timer.payload, 0.0)
        await self.reengagement.on_due(fired)

    async def sent(self) -> list[outbound_pb2.OutboundCommand]:
        """What the nudges published for egress."""
        subject = catalogue.outbound_subject(self.tenant, CONTACT)
        info = await self.js.stream_info(catalogue.OUTBOUND.name, subjects_filter=subject)
        count = (info.state.subjects or {}).get(subject, 0)
        subscription = await self.js.subscribe(subject, stream=catalogue.OUTBOUND.name, ordered_consumer=True)
        messages = [await subscription.next_msg(timeout=5) for _ in range(count)]
        await subscription.unsubscribe()
        return [outbound_pb2.OutboundCommand.FromString(message.data) for message in messages]


RigFor = Callable[[dict[str, Any]], Awaitable[Rig]]


@pytest.fixture
async def rig_for(js: JetStreamContext, core: CoreSettings) -> AsyncIterator[RigFor]:
    """A re-engagement for a new tenant of this spec, on the test's servers, with a clock of its own."""
    for stream in (catalogue.TIMER_STREAM, catalogue.OUTBOUND):
        await bus.ensure_stream(js, stream)
    redis = connect_redis(core.redis_url)
    database = create_engine(core.database_url)

    async def build(spec: dict[str, Any]) -> Rig:
        tenant = make_tenant(spec=spec)
        clock = Clock(WROTE_AT)
        reengagement = Reengagement(js, redis, database, {tenant.name: tenant}.get, Timers(js, redis), clock)
        return Rig(reengagement, clock, tenant.name, js, redis, database)

    yield build
    await redis.aclose()
    await database.dispose()


@pytest.fixture
async def rig(rig_for: RigFor) -> Rig:
    return await rig_for(RULES)


def payload_of(timer: Timer) -> Nudge:
    return Nudge.model_validate_json(timer.payload)


async def test_an_unanswered_turn_schedules_a_nudge_after_the_customer_s_last_message(rig: Rig) -> None:
    await rig.customer_wrote(WROTE_AT)
    await rig.turn("fallback")

    timer = await rig.waiting()
    assert timer is not None
    assert timer.due_at.ToDatetime(UTC) == WROTE_AT + timedelta(hours=4)
    assert (payload_of(timer).rule, payload_of(timer).last_customer_at) == ("unresolved", WROTE_AT.timestamp())


async def test_an_answered_turn_or_a_handoff_cancels_the_nudge(rig: Rig) -> None:
    await rig.customer_wrote(WROTE_AT)
    for outcome in ("rule", "handoff", "opted_out"):
        await rig.turn("fallback")
        assert await rig.waiting() is not None
        await rig.turn(outcome)
        assert await rig.waiting() is None, outcome


async def test_inside_the_window_the_nudge_is_the_rule_s_text(rig: Rig) -> None:
    await rig.customer_wrote(WROTE_AT)
    await rig.turn("fallback")
    timer = await rig.waiting()
    assert timer is not None

    await rig.fire(timer, WROTE_AT + timedelta(hours=4))

    (nudge,) = await rig.sent()
    assert nudge.WhichOneof("body") == "text"
    assert nudge.text.body.startswith("Still there?")
    assert nudge.command_id == f"re:{timer.timer_id}"
    assert nudge.window_closes_at.ToDatetime(UTC) == WROTE_AT + timedelta(hours=24)


async def test_outside_the_window_only_the_template_goes(rig: Rig) -> None:
    await rig.customer_wrote(WROTE_AT)
    await rig.turn("fallback")
    timer = await rig.waiting()
    assert timer is not None

    # The scheduler fires it late (within its late policy's two hours is the timer layer's call).
    await rig.fire(timer, WROTE_AT + timedelta(hours=24, minutes=1))

    (nudge,) = await rig.sent()
    assert nudge.WhichOneof("body") == "template"
    assert (nudge.template.name, nudge.template.language) == ("come_back", "pt_BR")


async def test_without_a_template_nothing_goes_once_the_window_closed(rig_for: RigFor) -> None:
    rig = await rig_for({"reengagement": {"rules": [{**UNRESOLVED, "template": None}]}})
    await rig.customer_wrote(WROTE_AT)
    await rig.turn("fallback")
    timer = await rig.waiting()
    assert timer is not None

    await rig.fire(timer, WROTE_AT + timedelta(hours=25))

    assert await rig.sent() == []


async def test_a_customer_who_wrote_since_gets_no_nudge(rig: Rig) -> None:
    await rig.customer_wrote(WROTE_AT)
    await rig.turn("fallback")
    timer = await rig.waiting()
    assert timer is not None
    # Their message's turn is still being answered when the old timer fires.
    await rig.customer_wrote(WROTE_AT + timedelta(hours=3))

    await rig.fire(timer, WROTE_AT + timedelta(hours=4))

    assert await rig.sent() == []


async def test_at_most_one_nudge_a_day_and_a_repeated_timer_sends_once(rig: Rig) -> None:
    await rig.customer_wrote(WROTE_AT)
    await rig.turn("fallback")
    first = await rig.waiting()
    assert first is not None
    await rig.fire(first, WROTE_AT + timedelta(hours=4))
    # The handler ran again (a replica died before recording it): the same command id.
    await rig.fire(first, WROTE_AT + timedelta(hours=4))

    # The customer writes, the bot fails again, and a new nudge comes due within the day.
    await rig.customer_wrote(WROTE_AT + timedelta(hours=5))
    await rig.turn("fallback")
    second = await rig.waiting()
    assert second is not None and second.timer_id != first.timer_id
    await rig.fire(second, WROTE_AT + timedelta(hours=9))

    # The repeat published the same id: JetStream's dedup kept one (and egress's key would send it once).
    assert [c.command_id for c in await rig.sent()] == [f"re:{first.timer_id}"]


async def test_a_marketing_template_is_not_sent_to_a_contact_who_opted_out(rig_for: RigFor) -> None:
    offer = {"name": "offer", "category": "marketing"}
    rig = await rig_for({"reengagement": {"rules": [{**UNRESOLVED, "template": offer}]}})
    await CampaignStore(rig.database).opt_out(rig.tenant, CONTACT, "keyword", WROTE_AT)
    await rig.customer_wrote(WROTE_AT)
    await rig.turn("fallback")
    timer = await rig.waiting()
    assert timer is not None

    await rig.fire(timer, WROTE_AT + timedelta(hours=30))

    assert await rig.sent() == []
