"""Closing idle sessions, retention and erasure in the relational store, on PostgreSQL and SQLite."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.analytics.handoffs import add_handoff
from tests.store.conversations import ALICE, BOB, exchange
from tests.store.events import T0, at, status
from zapflow.store.lifecycle import close_idle_conversations, delete_expired_conversations, erase_contact
from zapflow.store.models import (
    HANDOFF_RESOLVED,
    Base,
    Contact,
    Conversation,
    Handoff,
    HandoffEvent,
    Message,
    MessageStatus,
    Turn,
)
from zapflow.store.repository import ConversationStore
from zapflow.tenants.model import DataSpec


def data(idle_minutes: int = 30, retention_days: int = 90) -> DataSpec:
    return DataSpec(session_idle_minutes=idle_minutes, retention_days=retention_days)


async def count(engine: AsyncEngine, model: type[Base], **where: str) -> int:
    async with engine.connect() as conn:
        query = select(func.count()).select_from(model)
        for column, value in where.items():
            query = query.where(getattr(model, column) == value)
        return int((await conn.execute(query)).scalar_one())


async def conversations(engine: AsyncEngine) -> list[tuple[str, str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(Conversation.tenant, Conversation.contact, Conversation.status).order_by(
                Conversation.tenant, Conversation.contact, Conversation.id
            )
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


async def test_idle_conversations_close_at_their_last_message_each_tenant_on_its_own_clock(
    store: ConversationStore, engine: AsyncEngine
) -> None:
    await exchange(store, "a", 0, contact=ALICE)
    await exchange(store, "b", 0, contact=BOB)
    await exchange(store, "late", 50 * 60, contact=BOB)  # Bob wrote again 50 minutes later
    await exchange(store, "c", 0, tenant="globex", contact=ALICE)
    idle = {"acme": data(idle_minutes=30), "globex": data(idle_minutes=120)}

    closed = await close_idle_conversations(engine, idle.__getitem__, at(60 * 60))

    assert closed == 1  # Alice at acme; Bob's last message is 10 minutes old; globex waits 2 h
    assert await conversations(engine) == [
        ("acme", ALICE, "closed"),
        ("acme", BOB, "open"),
        ("globex", ALICE, "open"),
    ]
    async with engine.connect() as conn:
        closed_at = await conn.scalar(
            select(Conversation.closed_at).where(Conversation.tenant == "acme", Conversation.contact == ALICE)
        )
    assert closed_at == at(2)  # the bot's answer; the delivery status at +4 s is not a message


async def test_a_conversation_with_a_human_on_it_stays_open_until_the_handoff_is_resolved(
    store: ConversationStore, engine: AsyncEngine
) -> None:
    await exchange(store, "a", 0)
    await exchange(store, "b", 0, contact=BOB)
    # Neither knows its conversation (asked for before the store had it): the contact is what counts.
    waiting = await add_handoff(engine, ALICE, requested=1)
    await add_handoff(engine, BOB, requested=1, assigned=5)

    assert await close_idle_conversations(engine, lambda _: data(), at(3600)) == 0
    assert await conversations(engine) == [("acme", ALICE, "open"), ("acme", BOB, "open")]

    async with engine.begin() as conn:
        await conn.execute(
            update(Handoff).where(Handoff.id == waiting).values(status=HANDOFF_RESOLVED, resolved_at=at(60))
        )
    assert await close_idle_conversations(engine, lambda _: data(), at(3600)) == 1
    assert await conversations(engine) == [("acme", ALICE, "closed"), ("acme", BOB, "open")]


async def test_the_next_message_after_closing_opens_a_new_conversation(
    store: ConversationStore, engine: AsyncEngine
) -> None:
    await exchange(store, "a", 0)
    await close_idle_conversations(engine, lambda _: data(), at(3600))
    await exchange(store, "b", 7200)

    assert await conversations(engine) == [("acme", ALICE, "closed"), ("acme", ALICE, "open")]


async def test_retention_deletes_archived_conversations_past_their_tenants_days(
    store: ConversationStore, engine: AsyncEngine
) -> None:
    await exchange(store, "old", 0, contact=ALICE)
    await exchange(store, "unarchived", 0, contact=BOB)
    await exchange(store, "other-tenant", 0, tenant="globex", contact=ALICE)
    await close_idle_conversations(engine, lambda _: data(), at(3600))
    async with engine.begin() as conn:  # the archive job's mark, for all but Bob's
        await conn.execute(update(Conversation).where(Conversation.contact == ALICE).values(archived_at=at(3700)))
    retention = {"acme": data(retention_days=30), "globex": data(retention_days=365)}

    deleted = await delete_expired_conversations(engine, retention.__getitem__, T0 + timedelta(days=31))

    assert deleted.rows == {
        "message_statuses": 1,
        "messages": 2,
        "turns": 1,
        "handoff_events": 0,
        "handoffs": 0,
        "campaign_recipients": 0,
        "campaigns": 0,
        "conversations": 1,
        "contacts": 1,
    }
    assert await conversations(engine) == [("acme", BOB, "closed"), ("globex", ALICE, "closed")]
    assert await count(engine, Contact, tenant="acme") == 1  # Bob's stays with his conversation
    assert await count(engine, Message, tenant="globex") == 2


async def test_retention_drops_statuses_of_messages_never_recorded(
    store: ConversationStore, engine: AsyncEngine
) -> None:
    await store.record_status(status("wamid.unknown", "read", seconds=0))

    deleted = await delete_expired_conversations(engine, lambda _: data(retention_days=1), T0 + timedelta(days=2))

    assert deleted.rows == {
        "handoff_events": 0,
        "handoffs": 0,
        "campaign_recipients": 0,
        "campaigns": 0,
        "message_statuses": 1,
        "contacts": 1,
    }
    assert await count(engine, MessageStatus) == 0


async def test_retention_deletes_handoffs_resolved_past_their_tenants_days_and_never_an_open_one(
    store: ConversationStore, engine: AsyncEngine
) -> None:
    day = 24 * 3600
    expired = await add_handoff(engine, ALICE, requested=0, assigned=60, first_reply=90, resolved=600, note="VIP")
    await add_handoff(engine, ALICE, requested=0, resolved=29 * day)  # resolved within the 30 days: stays
    await add_handoff(engine, BOB, requested=0, assigned=60)  # open (assigned) for a month: stays
    await add_handoff(engine, "5511900000003", requested=0)  # waiting for a month: stays
    await add_handoff(engine, ALICE, tenant="globex", requested=0, resolved=600)  # globex keeps a year
    retention = {"acme": data(retention_days=30), "globex": data(retention_days=365)}

    deleted = await delete_expired_conversations(engine, retention.__getitem__, T0 + timedelta(days=31))

    # Its whole timeline: requested, assigned, reply, note, resolved.
    assert (deleted.rows["handoffs"], deleted.rows["handoff_events"]) == (1, 5)
    async with engine.connect() as conn:
        left = await conn.execute(select(Handoff.tenant, Handoff.contact, Handoff.status).order_by(Handoff.id))
        assert [tuple(row) for row in left] == [
            ("acme", ALICE, "resolved"),
            ("acme", BOB, "assigned"),
            ("acme", "5511900000003", "waiting"),
            ("globex", ALICE, "resolved"),
        ]
        assert await conn.scalar(select(func.count()).where(HandoffEvent.handoff_id == expired)) == 0
    assert await count(engine, HandoffEvent) == 2 + 2 + 1 + 2


async def test_erasing_a_contact_deletes_its_rows_and_nobody_elses(
    store: ConversationStore, engine: AsyncEngine
) -> None:
    await exchange(store, "a1", 0, contact=ALICE)
    await close_idle_conversations(engine, lambda _: data(), at(3600))
    await exchange(store, "a2", 7200, contact=ALICE)  # a second conversation
    await store.record_status(status("wamid.never-sent", "failed", seconds=1, contact=ALICE))
    await exchange(store, "b", 0, contact=BOB)
    await exchange(store, "g", 0, tenant="globex", contact=ALICE)
    await add_handoff(engine, ALICE, requested=0, assigned=5, first_reply=9, resolved=60, note="angry about billing")
    await add_handoff(engine, ALICE, requested=7200, assigned=7205, note="call back tomorrow")  # open: goes too
    await add_handoff(engine, BOB, requested=0, assigned=5, note="Bob's note")
    await add_handoff(engine, ALICE, tenant="globex", requested=0, note="another tenant's")

    deleted = await erase_contact(engine, "acme", ALICE)

    assert deleted.rows == {
        "message_statuses": 3,
        "messages": 4,
        "turns": 2,
        "conversations": 2,
        "handoff_events": 5 + 3,
        "handoffs": 2,
        "campaign_recipients": 0,
        "contact_preferences": 0,
        "contacts": 1,
    }
    for model in (Contact, Conversation, Message, MessageStatus, Turn, Handoff, HandoffEvent):
        column = "wa_id" if model is Contact else "contact"
        assert await count(engine, model, tenant="acme", **{column: ALICE}) == 0
        assert await count(engine, model, tenant="acme", **{column: BOB}) > 0
        assert await count(engine, model, tenant="globex", **{column: ALICE}) > 0
    assert (await erase_contact(engine, "acme", ALICE)).total == 0  # again: nothing left
