"""The recorder's `WriteBatcher` on a real database: when it writes, and whose event failed."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.store.events import UNSTORABLE_SEQ, inbound, status
from zapflow.recorder.writer import WriteBatcher
from zapflow.store.models import Message, MessageStatus
from zapflow.store.repository import ConversationStore, Event, Recorded, SequencedInbound

# Longer than any test may run: a batch written before it is written because it was full.
FOREVER_S = 3600.0


def batches_so_far() -> float:
    return REGISTRY.get_sample_value("zapflow_recorder_batch_events_count") or 0.0


def statuses(count: int) -> list[Event]:
    return [status(f"wamid.out.{n}", "delivered", contact=f"55119{n:08d}") for n in range(count)]


async def stored_statuses(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(MessageStatus)) or 0)


async def test_events_that_arrive_together_are_written_together(store: ConversationStore, engine: AsyncEngine) -> None:
    batcher = WriteBatcher(store, max_events=200, linger_s=0.005)
    before = batches_so_far()

    outcomes = await asyncio.gather(*(batcher.record(event) for event in statuses(50)))

    assert outcomes == [Recorded.NEW] * 50
    assert batches_so_far() - before == 1
    assert await stored_statuses(engine) == 50


async def test_a_full_batch_does_not_wait_for_the_linger(store: ConversationStore, engine: AsyncEngine) -> None:
    batcher = WriteBatcher(store, max_events=10, linger_s=FOREVER_S)
    before = batches_so_far()

    async with asyncio.timeout(30):
        outcomes = await asyncio.gather(*(batcher.record(event) for event in statuses(20)))

    assert outcomes == [Recorded.NEW] * 20
    assert batches_so_far() - before == 2
    assert await stored_statuses(engine) == 20


async def test_a_lone_event_is_written_after_the_linger(store: ConversationStore, engine: AsyncEngine) -> None:
    batcher = WriteBatcher(store, max_events=200, linger_s=0.005)

    assert await batcher.record(SequencedInbound(inbound("wamid.1"), 1)) is Recorded.NEW
    assert await batcher.record(SequencedInbound(inbound("wamid.1"), 1)) is Recorded.DUPLICATE
    async with engine.connect() as conn:
        assert await conn.scalar(select(Message.text)) == "hello"


async def test_a_failed_event_raises_in_its_own_caller_only(store: ConversationStore, engine: AsyncEngine) -> None:
    batcher = WriteBatcher(store, max_events=200, linger_s=0.005)
    good = statuses(6)
    events = [*good[:3], SequencedInbound(inbound("wamid.1"), UNSTORABLE_SEQ), *good[3:]]

    outcomes = await asyncio.gather(*(batcher.record(event) for event in events), return_exceptions=True)

    assert outcomes[:3] + outcomes[4:] == [Recorded.NEW] * 6
    assert isinstance(outcomes[3], Exception)
    assert await stored_statuses(engine) == 6
