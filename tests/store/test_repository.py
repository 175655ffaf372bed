"""The store's writes and reads, the same tests on PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.store.events import CONTACT, TENANT, at, inbound, reaction, reply, sent, status, turn
from zapflow.store.models import Contact, Conversation, Message, MessageStatus, Turn
from zapflow.store.repository import ConversationStore, Recorded
from zapflow.v1 import inbound_pb2, outbound_pb2
from zapflow.whatsapp.messages import HistoryEntry


async def count(engine: AsyncEngine, model: Any, *conditions: Any) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(model).where(*conditions)) or 0)


async def message(engine: AsyncEngine, *conditions: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(select(Message).where(*conditions))).one()


async def answered_turn(
    store: ConversationStore, turn_id: str, said: list[str], replies: list[str], *, seconds: float, tenant: str = TENANT
) -> None:
    """A turn as the engine produces it: the customer's messages, the turn, the bot's replies."""
    wamids = [f"wamid.{tenant}.{turn_id}.{i}" for i in range(len(said))]
    for i, (wamid, text) in enumerate(zip(wamids, said, strict=True)):
        await store.record_inbound(inbound(wamid, text, seconds=seconds + i, tenant=tenant), seq=int(seconds) + i)
    await store.record_turn(turn(turn_id, wamids, seconds=seconds, tenant=tenant))
    for index, text in enumerate(replies):
        await store.record_outbound(reply(turn_id, index, text, seconds=seconds + 3, tenant=tenant))


# --- idempotency ---


async def test_the_same_inbound_message_twice_is_one_row(store: ConversationStore, engine: AsyncEngine) -> None:
    assert await store.record_inbound(inbound("wamid.1", "hi"), seq=1) is Recorded.NEW
    assert await store.record_inbound(inbound("wamid.1", "hi"), seq=7) is Recorded.DUPLICATE

    assert await count(engine, Message) == 1
    assert await count(engine, Contact) == 1
    assert await count(engine, Conversation) == 1
    row = await message(engine, Message.wamid == "wamid.1")
    assert (row.direction, row.type, row.text, row.stream_seq) == ("inbound", "text", "hi", 1)
    assert row.body == {"body": "hi"}
    assert row.created_at == at(0)


async def test_the_same_status_twice_is_one_row(store: ConversationStore, engine: AsyncEngine) -> None:
    assert await store.record_status(status("wamid.out.1", "delivered", seconds=5)) is Recorded.NEW
    assert await store.record_status(status("wamid.out.1", "delivered", seconds=5)) is Recorded.DUPLICATE

    assert await count(engine, MessageStatus) == 1


async def test_the_same_turn_twice_is_one_row(store: ConversationStore, engine: AsyncEngine) -> None:
    await store.record_inbound(inbound("wamid.1"), seq=1)
    assert await store.record_turn(turn("in1-1", ["wamid.1"])) is Recorded.NEW
    assert await store.record_turn(turn("in1-1", ["wamid.1"])) is Recorded.DUPLICATE

    assert await count(engine, Turn) == 1
    async with engine.connect() as conn:
        row = (await conn.execute(select(Turn))).one()
    assert (row.responder, row.outcome, row.rule, row.message_count) == ("rules", "rule", "prices", 1)
    assert row.latency_ms == 250
    assert (row.created_at, row.closed_at, row.answered_at) == (at(0), at(2), at(2.25))
    assert (await message(engine, Message.wamid == "wamid.1")).turn_id == "in1-1"


async def test_the_same_outbound_command_and_result_twice_are_one_row(
    store: ConversationStore, engine: AsyncEngine
) -> None:
    command = reply("in1-1", 0, "Plans start at $10.")
    assert await store.record_outbound(command) is Recorded.NEW
    assert await store.record_outbound(command) is Recorded.DUPLICATE
    assert await store.record_outbound_result(sent(command, "wamid.out.1")) is Recorded.NEW
    assert await store.record_outbound_result(sent(command, "wamid.out.1")) is Recorded.DUPLICATE

    assert await count(engine, Message) == 1
    row = await message(engine, Message.command_id == "in1-1:0")
    assert (row.direction, row.wamid, row.turn_id, row.text) == (
        "outbound",
        "wamid.out.1",
        "in1-1",
        "Plans start at $10.",
    )


async def test_mark_read_commands_and_unknown_statuses_are_not_kept(
    store: ConversationStore, engine: AsyncEngine
) -> None:
    typing = outbound_pb2.OutboundCommand(
        command_id="in1-1:read", tenant=TENANT, contact=CONTACT, mark_read=outbound_pb2.MarkRead(wamid="wamid.1")
    )
    assert await store.record_outbound(typing) is Recorded.IGNORED
    assert await store.record_status(status("wamid.out.1", "deleted")) is Recorded.IGNORED

    assert await count(engine, Message) == 0
    assert await count(engine, MessageStatus) == 0


# --- order: facts that arrive before what they describe ---


async def test_statuses_before_their_message_end_up_attached_to_it(
    store: ConversationStore, engine: AsyncEngine
) -> None:
    command = reply("in1-1", 0, "Plans start at $10.", seconds=1)
    await store.record_status(status("wamid.out.1", "delivered", seconds=4))
    await store.record_status(status("wamid.out.1", "sent", seconds=3))
    await store.record_outbound(command)
    assert (await message(engine, Message.command_id == "in1-1:0")).status is None

    await store.record_outbound_result(sent(command, "wamid.out.1", seconds=2))

    row = await message(engine, Message.wamid == "wamid.out.1")
    assert (row.status, row.sent_at, row.delivered_at, row.read_at) == ("delivered", at(3), at(4), None)
    assert await count(engine, Message) == 1


async def test_a_result_before_its_command_is_filled_in_by_the_command(
    store: ConversationStore, engine: AsyncEngine
) -> None:
    command = reply("in1-1", 0, "Plans start at $10.", seconds=1)
    await store.record_status(status("wamid.out.1", "read", seconds=5))
    await store.record_outbound_result(sent(command, "wamid.out.1", seconds=2))
    placeholder = await message(engine, Message.command_id == "in1-1:0")
    assert (placeholder.type, placeholder.wamid, placeholder.status) == (None, "wamid.out.1", "read")

    assert await store.record_outbound(command) is Recorded.NEW

    row = await message(engine, Message.command_id == "in1-1:0")
    assert (row.type, row.text, row.created_at) == ("text", "Plans start at $10.", at(1))
    assert (row.wamid, row.status, row.read_at) == ("wamid.out.1", "read", at(5))
    assert await count(engine, Message) == 1


async def test_a_turn_before_its_messages_is_linked_to_them(store: ConversationStore, engine: AsyncEngine) -> None:
    await store.record_turn(turn("in1-2", ["wamid.1", "wamid.2"]))
    await store.record_outbound(reply("in1-2", 0, "Plans start at $10."))
    assert await store.record_inbound(inbound("wamid.1", "hi"), seq=1) is Recorded.NEW
    assert await store.record_inbound(inbound("wamid.2", "prices?", seconds=1), seq=2) is Recorded.NEW
    assert await store.record_inbound(inbound("wamid.2", "prices?", seconds=1), seq=2) is Recorded.DUPLICATE

    rows = [await message(engine, Message.wamid == w) for w in ("wamid.1", "wamid.2")]
    assert [(r.turn_id, r.text, r.stream_seq) for r in rows] == [("in1-2", "hi", 1), ("in1-2", "prices?", 2)]
    assert await count(engine, Message) == 3
    assert await store.history(TENANT, CONTACT, 5) == (
        HistoryEntry("customer", "hi\nprices?"),
        HistoryEntry("bot", "Plans start at $10."),
    )


async def test_events_racing_in_every_order_end_in_the_same_rows(store: ConversationStore, engine: AsyncEngine) -> None:
    """Command, Graph API result and three statuses of many messages, all written at once."""
    writes = []
    for n in range(20):
        command = reply(f"in{n}-{n}", 0, f"answer {n}", seconds=n)
        wamid = f"wamid.out.{n}"
        writes += [
            store.record_status(status(wamid, "read", seconds=n + 3)),
            store.record_outbound_result(sent(command, wamid, seconds=n + 1)),
            store.record_status(status(wamid, "sent", seconds=n + 1)),
            store.record_outbound(command),
            store.record_status(status(wamid, "delivered", seconds=n + 2)),
        ]
    await asyncio.gather(*writes[::2], *writes[1::2])

    async with engine.connect() as conn:
        rows = (await conn.execute(select(Message).order_by(Message.created_at))).all()
    assert [(r.text, r.wamid, r.status) for r in rows] == [(f"answer {n}", f"wamid.out.{n}", "read") for n in range(20)]
    assert all((r.sent_at, r.delivered_at, r.read_at) == (at(n + 1), at(n + 2), at(n + 3)) for n, r in enumerate(rows))


# --- statuses only move forward ---


async def test_statuses_never_move_backwards(store: ConversationStore, engine: AsyncEngine) -> None:
    command = reply("in1-1", 0, "Plans start at $10.")
    await store.record_outbound(command)
    await store.record_outbound_result(sent(command, "wamid.out.1"))

    await store.record_status(status("wamid.out.1", "read", seconds=3))
    await store.record_status(status("wamid.out.1", "delivered", seconds=2))
    await store.record_status(status("wamid.out.1", "sent", seconds=1))
    row = await message(engine, Message.wamid == "wamid.out.1")
    assert (row.status, row.sent_at, row.delivered_at, row.read_at) == ("read", at(1), at(2), at(3))

    # A voice note "played" is a read; an earlier report of a status keeps the earlier time.
    await store.record_status(status("wamid.out.1", "played", seconds=9))
    await store.record_status(status("wamid.out.1", "delivered", seconds=1.5))
    row = await message(engine, Message.wamid == "wamid.out.1")
    assert (row.status, row.delivered_at, row.read_at) == ("read", at(1.5), at(3))


async def test_failed_is_terminal(store: ConversationStore, engine: AsyncEngine) -> None:
    command = reply("in1-1", 0, "Plans start at $10.")
    await store.record_outbound(command)
    await store.record_outbound_result(sent(command, "wamid.out.1"))
    await store.record_status(status("wamid.out.1", "sent", seconds=1))
    error = inbound_pb2.StatusError(code=131026, title="Message undeliverable")
    await store.record_status(status("wamid.out.1", "failed", seconds=2, errors=[error]))
    await store.record_status(status("wamid.out.1", "delivered", seconds=3))

    row = await message(engine, Message.wamid == "wamid.out.1")
    assert (row.status, row.failed_at, row.error_code, row.error_title) == (
        "failed",
        at(2),
        131026,
        "Message undeliverable",
    )


async def test_a_refused_send_is_a_failed_message(store: ConversationStore, engine: AsyncEngine) -> None:
    command = reply("in1-1", 0, "Plans start at $10.")
    await store.record_outbound(command)
    refused = sent(command, "", seconds=1, result="window_closed")
    refused.error_code, refused.error_title = 131047, "Re-engagement message"
    assert await store.record_outbound_result(refused) is Recorded.NEW
    assert await store.record_outbound_result(refused) is Recorded.DUPLICATE

    row = await message(engine, Message.command_id == "in1-1:0")
    assert (row.wamid, row.status, row.failed_at, row.error_code) == (None, "failed", at(1), 131047)


# --- tenant isolation ---


async def test_the_same_wamid_under_two_tenants_is_two_rows(store: ConversationStore, engine: AsyncEngine) -> None:
    assert await store.record_inbound(inbound("wamid.1", "hi from acme"), seq=1) is Recorded.NEW
    assert await store.record_inbound(inbound("wamid.1", "hi from globex", tenant="globex"), seq=2) is Recorded.NEW
    await store.record_status(status("wamid.1", "read", tenant="globex"))

    assert await count(engine, Message) == 2
    assert (await message(engine, Message.tenant == "acme")).text == "hi from acme"
    assert (await message(engine, Message.tenant == "globex")).text == "hi from globex"
    assert await count(engine, MessageStatus, MessageStatus.tenant == "acme") == 0


async def test_history_never_shows_another_tenants_turns(store: ConversationStore) -> None:
    await answered_turn(store, "in1-1", ["acme question"], ["acme answer"], seconds=0)
    await answered_turn(store, "in1-1", ["globex question"], ["globex answer"], seconds=10, tenant="globex")

    assert await store.history(TENANT, CONTACT, 10) == (
        HistoryEntry("customer", "acme question"),
        HistoryEntry("bot", "acme answer"),
    )
    assert await store.history("globex", CONTACT, 10) == (
        HistoryEntry("customer", "globex question"),
        HistoryEntry("bot", "globex answer"),
    )


async def test_a_row_cannot_point_at_another_tenants_conversation(
    store: ConversationStore, engine: AsyncEngine
) -> None:
    await store.record_inbound(inbound("wamid.1"), seq=1)
    await store.record_inbound(inbound("wamid.2", tenant="globex"), seq=2)
    async with engine.connect() as conn:
        acme_conversation = await conn.scalar(select(Conversation.id).where(Conversation.tenant == "acme"))

    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(
                insert(Message).values(
                    tenant="globex",
                    contact=CONTACT,
                    conversation_id=acme_conversation,
                    direction="inbound",
                    wamid="wamid.3",
                    created_at=at(0),
                )
            )


# --- history ---


async def test_history_is_the_last_n_turns_oldest_first(store: ConversationStore) -> None:
    await answered_turn(store, "t1", ["hi"], ["Hi! Ask me about prices."], seconds=0)
    await answered_turn(store, "t2", ["prices?", "and plans"], ["Plans start at $10.", "Anything else?"], seconds=10)
    # Only a reaction: nothing was said, so it is not an exchange.
    await store.record_inbound(reaction("wamid.r", "👍", seconds=20), seq=20)
    await store.record_turn(turn("t3", ["wamid.r"], seconds=20, outcome="silent", rule=""))
    await answered_turn(store, "t4", ["thanks"], ["You're welcome."], seconds=30)

    assert await store.history(TENANT, CONTACT, 2) == (
        HistoryEntry("customer", "prices?\nand plans"),
        HistoryEntry("bot", "Plans start at $10.\nAnything else?"),
        HistoryEntry("customer", "thanks"),
        HistoryEntry("bot", "You're welcome."),
    )
    assert len(await store.history(TENANT, CONTACT, 10)) == 6
    assert await store.history(TENANT, CONTACT, 0) == ()
    assert await store.history(TENANT, "5511000000000", 10) == ()


# --- contacts and conversations ---


async def test_contact_times_only_move_the_right_way(store: ConversationStore, engine: AsyncEngine) -> None:
    await store.record_inbound(inbound("wamid.2", seconds=60, name="Maria Silva"), seq=2)
    # Redelivered late: an older message under an older profile name.
    await store.record_inbound(inbound("wamid.1", seconds=0, name="Maria"), seq=1)
    await store.record_status(status("wamid.out.1", "read", seconds=90))

    async with engine.connect() as conn:
        contact = (await conn.execute(select(Contact))).one()
    assert contact.profile_name == "Maria Silva"
    assert (contact.first_seen_at, contact.last_customer_message_at, contact.last_seen_at) == (at(0), at(60), at(90))


async def test_a_message_after_the_conversation_closed_opens_a_new_one(
    store: ConversationStore, engine: AsyncEngine
) -> None:
    await store.record_inbound(inbound("wamid.1"), seq=1)
    assert await store.close_conversation(TENANT, CONTACT, at(600))
    assert not await store.close_conversation(TENANT, CONTACT, at(601))

    # A redelivery of the old message changes nothing; a new message opens a new conversation.
    await store.record_inbound(inbound("wamid.1"), seq=1)
    assert await count(engine, Conversation) == 1
    await store.record_inbound(inbound("wamid.2", seconds=900), seq=2)

    async with engine.connect() as conn:
        conversations = (await conn.execute(select(Conversation).order_by(Conversation.id))).all()
    assert [(c.status, c.opened_at, c.closed_at) for c in conversations] == [
        ("closed", at(0), at(600)),
        ("open", at(900), None),
    ]
    assert (await message(engine, Message.wamid == "wamid.2")).conversation_id == conversations[1].id
