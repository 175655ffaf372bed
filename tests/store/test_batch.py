"""Many events in one transaction (`record_batch`), the same tests on PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.store.events import CONTACT, UNSTORABLE_SEQ, inbound, reply, sent, status, turn
from zapflow.store.models import Contact, Conversation, Message, MessageStatus, Turn
from zapflow.store.repository import ConversationStore, Event, Recorded, SequencedInbound
from zapflow.v1 import inbound_pb2, outbound_pb2, turn_pb2

OTHER_CONTACT = "5511999990002"


def arrivals(tenant: str) -> list[Event]:
    """Two contacts' events as the recorder's consumers deliver them: interleaved, early, late, twice."""
    answer = reply("in1-2", 0, "Plans start at $10.", seconds=3, tenant=tenant)
    greeting = reply("in3-3", 0, "Hello!", seconds=12, tenant=tenant, contact=OTHER_CONTACT)
    refused = reply("in3-3", 1, "Anything else?", seconds=12, tenant=tenant, contact=OTHER_CONTACT)
    refusal = sent(refused, "", seconds=13, result="window_closed")
    refusal.error_code, refusal.error_title = 131047, "Re-engagement message"
    mark_read = outbound_pb2.OutboundCommand(
        command_id="in1-2:read", tenant=tenant, contact=CONTACT, mark_read=outbound_pb2.MarkRead(wamid="wamid.1")
    )
    return [
        status("wamid.out.1", "read", seconds=6, tenant=tenant),  # before its message
        turn("in1-2", ["wamid.1", "wamid.2"], tenant=tenant),  # before its messages
        SequencedInbound(inbound("wamid.1", "hi", tenant=tenant), 1),
        SequencedInbound(inbound("wamid.3", "oi", seconds=10, tenant=tenant, contact=OTHER_CONTACT, name="João"), 3),
        sent(greeting, "wamid.out.2", seconds=13),  # before its command
        answer,
        SequencedInbound(inbound("wamid.2", "prices?", seconds=1, tenant=tenant), 2),
        sent(answer, "wamid.out.1", seconds=4),
        status("wamid.out.1", "sent", seconds=4, tenant=tenant),
        SequencedInbound(inbound("wamid.1", "hi", tenant=tenant), 1),  # redelivered
        status("wamid.out.1", "delivered", seconds=5, tenant=tenant),
        turn("in3-3", ["wamid.3"], seconds=10, tenant=tenant, contact=OTHER_CONTACT),
        greeting,
        refused,
        refusal,
        status("wamid.out.1", "read", seconds=6, tenant=tenant),  # redelivered
        status("wamid.out.2", "delivered", seconds=14, tenant=tenant, contact=OTHER_CONTACT),
        mark_read,
        status("wamid.out.2", "deleted", tenant=tenant, contact=OTHER_CONTACT),
    ]


async def record_alone(store: ConversationStore, event: Event) -> Recorded:
    match event:
        case SequencedInbound(message, seq):
            return await store.record_inbound(message, seq)
        case outbound_pb2.OutboundCommand():
            return await store.record_outbound(event)
        case outbound_pb2.OutboundResult():
            return await store.record_outbound_result(event)
        case inbound_pb2.StatusUpdate():
            return await store.record_status(event)
        case turn_pb2.Turn():
            return await store.record_turn(event)


async def rows_of(engine: AsyncEngine, tenant: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of a tenant, less the tenant and surrogate ids: a conversation is named by its contents."""
    tables: dict[str, list[dict[str, Any]]] = {}
    async with engine.connect() as conn:
        conversations = {
            row.id: (row.contact, row.opened_at, row.status)
            for row in await conn.execute(select(Conversation).where(Conversation.tenant == tenant))
        }
        for model in (Contact, Conversation, Message, MessageStatus, Turn):
            table = model.__table__
            found = []
            for row in await conn.execute(select(table).where(table.c.tenant == tenant)):
                values = row._asdict()
                del values["tenant"]
                values.pop("id", None)
                if "conversation_id" in values:
                    values["conversation_id"] = conversations[values["conversation_id"]]
                found.append(values)
            tables[table.name] = sorted(found, key=repr)
    return tables


async def test_a_batch_leaves_the_rows_that_writing_its_events_one_by_one_leaves(
    store: ConversationStore, engine: AsyncEngine
) -> None:
    one_by_one = [await record_alone(store, event) for event in arrivals("acme")]
    batched = await store.record_batch(arrivals("globex"))

    assert batched == one_by_one
    assert batched.count(Recorded.DUPLICATE) == 2  # the redelivered message and status
    assert batched.count(Recorded.IGNORED) == 2  # the mark-read command and the unknown status
    assert await rows_of(engine, "globex") == await rows_of(engine, "acme")
    # What both left is the complete story, not the same mistake twice.
    async with engine.connect() as conn:
        messages = (
            await conn.execute(select(Message).where(Message.tenant == "globex").order_by(Message.created_at))
        ).all()
    assert [(m.contact, m.text, m.turn_id, m.status) for m in messages] == [
        (CONTACT, "hi", "in1-2", None),
        (CONTACT, "prices?", "in1-2", None),
        (CONTACT, "Plans start at $10.", "in1-2", "read"),
        (OTHER_CONTACT, "oi", "in3-3", None),
        (OTHER_CONTACT, "Hello!", "in3-3", "delivered"),
        (OTHER_CONTACT, "Anything else?", "in3-3", "failed"),
    ]


async def test_an_event_that_cannot_be_stored_fails_alone(store: ConversationStore, engine: AsyncEngine) -> None:
    command = reply("in1-1", 0, "Plans start at $10.")
    outcomes = await store.record_batch(
        [
            SequencedInbound(inbound("wamid.1", "hi"), 1),
            SequencedInbound(inbound("wamid.2", "prices?"), UNSTORABLE_SEQ),
            command,
            status("wamid.out.1", "read", contact=OTHER_CONTACT),
        ]
    )

    assert outcomes[:1] + outcomes[2:] == [Recorded.NEW] * 3
    assert isinstance(outcomes[1], Exception)
    async with engine.connect() as conn:
        stored = (await conn.execute(select(Message.wamid, Message.command_id).order_by(Message.id))).all()
        statuses = (await conn.execute(select(MessageStatus.wamid))).scalars().all()
    assert [tuple(row) for row in stored] == [("wamid.1", None), (None, "in1-1:0")]
    assert statuses == ["wamid.out.1"]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_an_event_postgresql_refuses_fails_alone(store: ConversationStore, engine: AsyncEngine) -> None:
    """The server's error aborts the batch's transaction; the other events are written again."""
    outcomes = await store.record_batch(
        [
            SequencedInbound(inbound("wamid.1", "hi"), 1),
            status("wamid.out.1", "read", tenant="t" * 64),  # longer than a tenant name (a DNS label)
            SequencedInbound(inbound("wamid.2", "hi", contact=OTHER_CONTACT), 2),
        ]
    )

    assert (outcomes[0], outcomes[2]) == (Recorded.NEW, Recorded.NEW)
    assert isinstance(outcomes[1], Exception)
    assert "value too long" in str(outcomes[1])
    # Errors reach logs and dead letters: they must not quote the statement's values.
    assert "5511" not in str(outcomes[1]) and "hidden due to hide_parameters" in str(outcomes[1])
    async with engine.connect() as conn:
        assert (await conn.execute(select(Message.wamid).order_by(Message.wamid))).scalars().all() == [
            "wamid.1",
            "wamid.2",
        ]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_concurrent_batches_over_the_same_contacts_both_commit(
    store: ConversationStore, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two recorder replicas, each holding the same contacts' events in the opposite order.

    Taking contact locks in arrival order, the two transactions would each wait for a lock the
    other holds: PostgreSQL would abort one, and it would be written again event by event.
    """
    written_alone: list[Event] = []
    write_alone = store._record_alone

    async def count_written_alone(event: Event) -> Recorded | Exception:
        written_alone.append(event)
        return await write_alone(event)

    monkeypatch.setattr(store, "_record_alone", count_written_alone)
    contacts = [f"55119{n:08d}" for n in range(40)]

    def batch(name: str, order: list[str]) -> list[Event]:
        events: list[Event] = []
        for n, contact in enumerate(order):
            events.append(SequencedInbound(inbound(f"wamid.{name}.{contact}", contact=contact), n + 1))
            events.append(status(f"wamid.out.{name}.{contact}", "delivered", contact=contact))
        return events

    first, second = await asyncio.gather(
        store.record_batch(batch("a", contacts)), store.record_batch(batch("b", contacts[::-1]))
    )

    assert first == second == [Recorded.NEW] * 80
    assert written_alone == []
    async with engine.connect() as conn:
        assert len((await conn.execute(select(Message.id))).all()) == 80
        assert len((await conn.execute(select(MessageStatus.wamid))).all()) == 80
