"""The desk's queue on real NATS, Redis and SQLite, without the rest of the platform: round-robin assignment
within the cap, claims and transfers, inactivity timeouts, owner keys put back after Redis lost them, the
customer's notice and the queue gauges.

Time is moved in the store (an older `last_activity_at`, an earlier `requested_at`), never waited for.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from tests.support.handoff import handoffs_of
from tests.support.platform import eventually
from tests.support.tenants import make_tenant
from zapflow.handoff.desk import COMMAND_PREFIX, SYSTEM, Desk, DeskError, Summary
from zapflow.platform import bus, catalogue, keys
from zapflow.platform.connections import Connections, Needs, connected
from zapflow.platform.settings import CoreSettings
from zapflow.store.models import HANDOFF_ASSIGNED, HANDOFF_RESOLVED, HANDOFF_WAITING, Handoff, HandoffEvent
from zapflow.tenants.model import WEEKDAYS, BotTenant
from zapflow.v1 import handoff_pb2, inbound_pb2, outbound_pb2

ANA, BRUNO, CARLA, DORA, EDU = (f"{name}@example.com" for name in ("ana", "bruno", "carla", "dora", "edu"))
NOTICE = "Um atendente vai falar com você por aqui."
WAIT_NOTICE = "Espera: cerca de {minutes} min."
CLOSED_NOTICE = "Estamos fechados; um atendente responde quando abrirmos."


def customer(number: int) -> str:
    return f"55119000{number:05d}"


@pytest.fixture
async def connections(core: CoreSettings) -> AsyncIterator[Connections]:
    """What the handoff service connects to, with the registry's live view followed."""
    needs = Needs(streams=(catalogue.OUTBOUND, catalogue.EVENTS, catalogue.DEAD_LETTER), database=True)
    async with connected("test", core, needs) as opened:
        yield opened


@pytest.fixture
def desk(connections: Connections) -> Desk:
    return Desk(connections.database, connections.redis, connections.nc, connections.js, connections.registry)


async def tenant_with(connections: Connections, **handoff: Any) -> BotTenant:
    """A tenant with this `handoff:` section, once the desk's view of the registry has it."""
    tenant = make_tenant(spec={"handoff": {"notice": NOTICE, "waitNotice": WAIT_NOTICE, **handoff}})
    await connections.registry.put(tenant)

    async def seen() -> BotTenant | None:
        return connections.registry.by_name(tenant.name)

    return await eventually(seen, what=f"tenant {tenant.name} in the registry's live view")


def request(
    tenant: BotTenant, contact: str, reason: str = "customer_asked", at: datetime | None = None
) -> handoff_pb2.HandoffEvent:
    """A turn asking for a person, as the conversation engine publishes it; the customer wrote just now."""
    turn_id = f"turn-{uuid.uuid4().hex}"
    message = inbound_pb2.InboundMessage(
        tenant=tenant.name,
        contact=contact,
        contact_name="Maria",
        wamid=f"wamid.{turn_id}",
        sent_at=bus.now_timestamp(),
        type="text",
        text=inbound_pb2.Text(body="quero falar com um atendente"),
    )
    event = handoff_pb2.HandoffEvent(
        tenant=tenant.name,
        contact=contact,
        turn_id=turn_id,
        kind="requested",
        reason=reason,
        messages=[message],
        owner=turn_id,
    )
    event.at.FromDatetime(at or datetime.now(UTC))
    return event


async def requested(
    desk: Desk, tenant: BotTenant, contact: str, reason: str = "customer_asked", at: datetime | None = None
) -> Summary:
    """The contact's handoff, opened by a turn's request."""
    await desk.on_event(request(tenant, contact, reason, at))
    summary = await desk.current(tenant.name, contact)
    assert summary is not None, f"no open handoff for {contact} after its request"
    return summary


async def timeline(connections: Connections, handoff_id: int) -> list[tuple[str, str, dict[str, Any]]]:
    """The handoff's events (kind, actor, data) in the order they happened."""
    query = (
        select(HandoffEvent.kind, HandoffEvent.actor, HandoffEvent.data)
        .where(HandoffEvent.handoff_id == handoff_id)
        .order_by(HandoffEvent.id)
    )
    async with connections.database.connect() as conn:
        return [(row.kind, row.actor, dict(row.data)) for row in await conn.execute(query)]


async def assignments(connections: Connections, tenant: BotTenant) -> list[tuple[int, str]]:
    """(handoff, agent) of every assignment in the tenant, in the order they were made."""
    query = (
        select(HandoffEvent.handoff_id, HandoffEvent.data)
        .where(HandoffEvent.tenant == tenant.name, HandoffEvent.kind == "assigned")
        .order_by(HandoffEvent.id)
    )
    async with connections.database.connect() as conn:
        return [(row.handoff_id, row.data["agent"]) for row in await conn.execute(query)]


async def idle_since(connections: Connections, handoff_id: int, ago: timedelta) -> None:
    """Nobody wrote in the handoff for `ago`."""
    async with connections.database.begin() as conn:
        await conn.execute(
            update(Handoff).where(Handoff.id == handoff_id).values(last_activity_at=datetime.now(UTC) - ago)
        )


async def owner(connections: Connections, tenant: BotTenant, contact: str) -> str | None:
    value = await connections.redis.get(keys.ContactKeys(tenant.name, contact).owner)
    return None if value is None else str(value)


async def notice_to(connections: Connections, tenant: BotTenant, contact: str) -> outbound_pb2.OutboundCommand:
    """The last command the desk published for the contact."""
    last = await connections.js.get_last_msg(catalogue.OUTBOUND.name, catalogue.outbound_subject(tenant.name, contact))
    assert last.data is not None
    return outbound_pb2.OutboundCommand.FromString(last.data)


def gauge(name: str, tenant: BotTenant) -> float | None:
    return REGISTRY.get_sample_value(name, {"tenant": tenant.name})


# --- assignment ---


async def test_waiting_conversations_go_round_robin_to_online_agents_within_the_cap(
    connections: Connections, desk: Desk
) -> None:
    tenant = await tenant_with(connections, maxOpenPerAgent=2)
    started = datetime.now(UTC) - timedelta(minutes=10)
    # Nobody online yet: all seven wait, the oldest first.
    waiting = [await requested(desk, tenant, customer(i), at=started + timedelta(minutes=i)) for i in range(7)]
    assert [s.status for s in waiting] == [HANDOFF_WAITING] * 7

    for agent in (CARLA, ANA, DORA, BRUNO):
        await desk.touch(tenant.name, agent)
    await desk.leave(tenant.name, DORA)  # closed her inbox; EDU never opened his

    assert await desk.assign_waiting(tenant) == 6
    expected = [ANA, BRUNO, CARLA, ANA, BRUNO, CARLA]
    assert await assignments(connections, tenant) == [
        (s.id, agent) for s, agent in zip(waiting, expected, strict=False)
    ]
    last = waiting[6]
    assert (await desk.get(tenant.name, last.id)).status == HANDOFF_WAITING, "every online agent is at the cap"
    assert not await desk.conversations(tenant.name, agent=DORA)
    assert not await desk.conversations(tenant.name, agent=EDU)

    await desk.resolve(tenant.name, waiting[4].id, BRUNO)
    # Resolving frees a place; the sweep fills it.
    assert (await desk.get(tenant.name, last.id)).status == HANDOFF_WAITING
    await desk.sweep()
    given = await desk.get(tenant.name, last.id)
    assert (given.status, given.agent) == (HANDOFF_ASSIGNED, BRUNO)


async def test_a_higher_priority_conversation_is_assigned_before_older_ones(
    connections: Connections, desk: Desk
) -> None:
    tenant = await tenant_with(
        connections, maxOpenPerAgent=1, priorities={"customer_asked": 1, "responder_failures": 3}
    )
    started = datetime.now(UTC) - timedelta(minutes=10)
    oldest = await requested(desk, tenant, customer(1), at=started)
    older = await requested(desk, tenant, customer(2), at=started + timedelta(minutes=1))
    failed = await requested(desk, tenant, customer(3), "responder_failures", at=started + timedelta(minutes=2))
    assert (oldest.priority, older.priority, failed.priority) == (1, 1, 3)
    raised = await desk.set_priority(tenant.name, older.id, ANA, 9)
    assert raised.priority == 9
    queue = await desk.conversations(tenant.name, "waiting")
    assert [s.id for s in queue] == [older.id, failed.id, oldest.id]

    await desk.touch(tenant.name, ANA)
    assert await desk.assign_waiting(tenant) == 1
    assert (await desk.get(tenant.name, older.id)).agent == ANA

    await desk.resolve(tenant.name, older.id, ANA)
    await desk.sweep()
    assert (await desk.get(tenant.name, failed.id)).agent == ANA
    assert (await desk.get(tenant.name, oldest.id)).status == HANDOFF_WAITING


# --- claims and transfers ---


async def test_claims_and_transfers_respect_the_cap_and_the_owner(connections: Connections, desk: Desk) -> None:
    tenant = await tenant_with(connections, autoAssign=False, maxOpenPerAgent=1)
    first = await requested(desk, tenant, customer(1))
    second = await requested(desk, tenant, customer(2))

    claimed = await desk.claim(tenant.name, first.id, ANA)
    assert (claimed.status, claimed.agent) == (HANDOFF_ASSIGNED, ANA)
    assert await desk.claim(tenant.name, first.id, ANA) == claimed, "claiming one's own conversation changes nothing"
    with pytest.raises(DeskError, match=r"holds 1 conversations, the most this tenant allows \(1\)") as at_cap:
        await desk.claim(tenant.name, second.id, ANA)
    assert at_cap.value.kind == "conflict"
    with pytest.raises(DeskError, match=f"the conversation is {ANA}'s already") as taken:
        await desk.claim(tenant.name, first.id, BRUNO)
    assert taken.value.kind == "conflict"
    with pytest.raises(DeskError, match=r"the most this tenant allows \(1\)"):
        await desk.take(tenant.name, customer(3), ANA)
    assert await handoffs_of(connections.database, tenant.name, customer(3)) == []

    moved = await desk.transfer(tenant.name, first.id, ANA, BRUNO)
    assert (moved.status, moved.agent) == (HANDOFF_ASSIGNED, BRUNO)
    requeued = await desk.transfer(tenant.name, first.id, BRUNO, None)
    assert (requeued.status, requeued.agent, requeued.assigned_at) == (HANDOFF_WAITING, None, None)
    assert [event for event in await timeline(connections, first.id) if event[0] in ("transferred", "requeued")] == [
        ("transferred", ANA, {"from": ANA, "to": BRUNO}),
        ("requeued", BRUNO, {"from": BRUNO, "to": None}),
    ]

    await desk.claim(tenant.name, second.id, ANA)
    await desk.claim(tenant.name, first.id, BRUNO)
    with pytest.raises(DeskError, match=f"{ANA} holds 1 conversations") as refused:
        await desk.transfer(tenant.name, first.id, BRUNO, ANA)
    assert refused.value.kind == "conflict"
    kept = await desk.get(tenant.name, first.id)
    assert (kept.status, kept.agent) == (HANDOFF_ASSIGNED, BRUNO)


# --- inactivity ---


async def idle_and_busy(connections: Connections, desk: Desk, tenant: BotTenant) -> tuple[Summary, Summary]:
    """Two conversations of ANA's: one nobody wrote in for two hours, one just opened."""
    idle = await desk.claim(tenant.name, (await requested(desk, tenant, customer(1))).id, ANA)
    busy = await desk.claim(tenant.name, (await requested(desk, tenant, customer(2))).id, ANA)
    await idle_since(connections, idle.id, timedelta(hours=2))
    return idle, busy


async def test_an_idle_conversation_goes_back_to_the_queue(connections: Connections, desk: Desk) -> None:
    tenant = await tenant_with(connections, autoAssign=False, inactivityMinutes=30, onInactivity="queue")
    idle, busy = await idle_and_busy(connections, desk, tenant)

    await desk.sweep()

    requeued = await desk.get(tenant.name, idle.id)
    assert (requeued.status, requeued.agent, requeued.assigned_at) == (HANDOFF_WAITING, None, None)
    assert (await timeline(connections, idle.id))[-1] == ("timeout", SYSTEM, {"to": "queue", "from": ANA})
    # Still with a person: the bot stays silent.
    assert await owner(connections, tenant, idle.contact) == idle.request_id
    assert await desk.get(tenant.name, busy.id) == busy
    assert "timeout" not in [kind for kind, _, _ in await timeline(connections, busy.id)]


async def test_an_idle_conversation_goes_back_to_the_bot(connections: Connections, desk: Desk) -> None:
    tenant = await tenant_with(connections, autoAssign=False, inactivityMinutes=30, onInactivity="bot")
    idle, busy = await idle_and_busy(connections, desk, tenant)

    await desk.sweep()

    ended = await desk.get(tenant.name, idle.id)
    assert (ended.status, ended.resolution, ended.resolved_by) == (HANDOFF_RESOLVED, "timeout", SYSTEM)
    assert await owner(connections, tenant, idle.contact) is None
    assert await desk.get(tenant.name, busy.id) == busy
    assert await owner(connections, tenant, busy.contact) == busy.request_id


async def test_a_conversation_just_claimed_does_not_time_out_for_its_wait_in_the_queue(
    connections: Connections, desk: Desk
) -> None:
    tenant = await tenant_with(connections, autoAssign=False, inactivityMinutes=30, onInactivity="queue")
    # It waited in the queue for two hours (closed overnight, every agent busy) before ANA took it.
    waited = await requested(desk, tenant, customer(1))
    await idle_since(connections, waited.id, timedelta(hours=2))
    await desk.claim(tenant.name, waited.id, ANA)

    await desk.sweep()

    kept = await desk.get(tenant.name, waited.id)
    # Changing hands restarts the clock: ANA claimed it seconds ago.
    assert (kept.status, kept.agent) == (HANDOFF_ASSIGNED, ANA)


async def test_a_conversation_waiting_while_the_business_is_closed_keeps_its_place(
    connections: Connections, desk: Desk
) -> None:
    other_day = WEEKDAYS[(datetime.now(UTC).weekday() + 3) % 7]
    closed_now = {"timezone": "UTC", "hours": [{"days": [other_day], "opens": "00:00", "closes": "24:00"}]}
    tenant = await tenant_with(
        connections, autoAssign=False, inactivityMinutes=30, onInactivity="bot", businessHours=closed_now
    )
    waiting = await requested(desk, tenant, customer(1))
    await idle_since(connections, waiting.id, timedelta(hours=2))

    await desk.sweep()

    # Told "a person will answer when we open": the wait does not time out while nobody can answer.
    kept = await desk.get(tenant.name, waiting.id)
    assert kept.status == HANDOFF_WAITING
    assert await owner(connections, tenant, waiting.contact) == waiting.request_id


# --- owner keys ---


async def test_the_sweep_puts_back_owner_keys_of_open_handoffs_only(connections: Connections, desk: Desk) -> None:
    tenant = await tenant_with(connections)
    waiting = await requested(desk, tenant, customer(1))
    ended = await desk.resolve(tenant.name, (await requested(desk, tenant, customer(2))).id, SYSTEM)
    assert ended.status == HANDOFF_RESOLVED
    # Redis restarted without persistence: every owner key is gone.
    await connections.redis.delete(*(keys.ContactKeys(tenant.name, s.contact).owner for s in (waiting, ended)))

    await desk.sweep()

    assert await owner(connections, tenant, waiting.contact) == waiting.request_id
    assert await owner(connections, tenant, ended.contact) is None


# --- what the customer is told ---


async def test_the_notice_tells_the_expected_wait_while_agents_are_online(connections: Connections, desk: Desk) -> None:
    tenant = await tenant_with(connections)
    await desk.touch(tenant.name, ANA)

    first = await requested(desk, tenant, customer(1))
    notice = await notice_to(connections, tenant, first.contact)
    assert (notice.command_id, notice.sender) == (f"{COMMAND_PREFIX}{first.request_id}:notice", "handoff")
    # No assignment measured yet: the default of five minutes.
    assert notice.text.body == f"{NOTICE} Espera: cerca de 5 min."

    # ANA took the first one twelve minutes after it was asked for.
    assigned = await desk.get(tenant.name, first.id)
    assert assigned.agent == ANA and assigned.assigned_at is not None
    async with connections.database.begin() as conn:
        await conn.execute(
            update(Handoff)
            .where(Handoff.id == first.id)
            .values(requested_at=assigned.assigned_at - timedelta(minutes=12))
        )
    second = await requested(desk, tenant, customer(2))
    assert (await notice_to(connections, tenant, second.contact)).text.body == f"{NOTICE} Espera: cerca de 12 min."

    await desk.leave(tenant.name, ANA)
    third = await requested(desk, tenant, customer(3))
    assert (await notice_to(connections, tenant, third.contact)).text.body == NOTICE


async def test_outside_business_hours_the_customer_is_told_the_closed_notice(
    connections: Connections, desk: Desk
) -> None:
    # Open only on a day three days away from today: closed now, whatever the clock says.
    other_day = WEEKDAYS[(datetime.now(UTC).weekday() + 3) % 7]
    hours = {"timezone": "UTC", "hours": [{"days": [other_day], "opens": "00:00", "closes": "24:00"}]}
    tenant = await tenant_with(connections, businessHours=hours, closedNotice=CLOSED_NOTICE)
    await desk.touch(tenant.name, ANA)

    summary = await requested(desk, tenant, customer(1))

    assert (await notice_to(connections, tenant, summary.contact)).text.body == CLOSED_NOTICE
    # Still queued (and, with ANA online, assigned): the hours change what the customer is told only.
    assert (await desk.get(tenant.name, summary.id)).agent == ANA


async def test_a_redelivered_request_opens_one_handoff_and_one_notice(connections: Connections, desk: Desk) -> None:
    tenant = await tenant_with(connections)
    event = request(tenant, customer(1))

    await desk.on_event(event)
    await desk.on_event(event)

    [row] = await handoffs_of(connections.database, tenant.name, event.contact)
    assert (row.request_id, row.status) == (event.turn_id, HANDOFF_WAITING)
    assert [kind for kind, _, _ in await timeline(connections, row.id)] == ["requested", "forwarded"]
    assert await owner(connections, tenant, event.contact) == event.turn_id
    subject = catalogue.outbound_subject(tenant.name, event.contact)
    stream = await connections.js.stream_info(catalogue.OUTBOUND.name, subjects_filter=subject)
    assert stream.state.subjects == {subject: 1}, "the second notice has the first one's id: JetStream drops it"
    notice = await notice_to(connections, tenant, event.contact)
    assert (notice.command_id, notice.text.body) == (f"{COMMAND_PREFIX}{event.turn_id}:notice", NOTICE)


# --- gauges ---


async def test_the_sweep_sets_the_queue_gauges(connections: Connections, desk: Desk) -> None:
    tenant = await tenant_with(connections, autoAssign=False)
    quiet = await tenant_with(connections)
    now = datetime.now(UTC)
    oldest = await requested(desk, tenant, customer(1), at=now - timedelta(minutes=5))
    await requested(desk, tenant, customer(2), at=now - timedelta(minutes=1))
    await desk.touch(tenant.name, ANA)
    await desk.touch(tenant.name, BRUNO)

    await desk.sweep()

    assert gauge("zapflow_handoff_queue_length", tenant) == 2
    oldest_wait = gauge("zapflow_handoff_oldest_wait_seconds", tenant)
    assert oldest_wait is not None and 300 <= oldest_wait < 360
    assert gauge("zapflow_handoff_agents_online", tenant) == 2
    # A tenant nobody waits in reads zero, not a stale value.
    assert gauge("zapflow_handoff_queue_length", quiet) == 0
    assert gauge("zapflow_handoff_oldest_wait_seconds", quiet) == 0
    assert gauge("zapflow_handoff_agents_online", quiet) == 0

    await desk.claim(tenant.name, oldest.id, ANA)
    await desk.leave(tenant.name, BRUNO)
    await desk.sweep()

    assert gauge("zapflow_handoff_queue_length", tenant) == 1
    oldest_wait = gauge("zapflow_handoff_oldest_wait_seconds", tenant)
    assert oldest_wait is not None and 60 <= oldest_wait < 120
    assert gauge("zapflow_handoff_agents_online", tenant) == 1
