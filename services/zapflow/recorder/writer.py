"""Keeps the relational store current from the bus.

Each kind of event has its own durable consumer, so recording never slows the engine down and a
database outage only delays the store: messages wait in JetStream and are retried. Every write
is idempotent, so a redelivery never makes a second row.

The five consumers share one `WriteBatcher`, which writes many events per transaction: one
transaction per event made the recorder the busiest process of the benchmark (docs/benchmark.md).
A handler returns only once its event's batch committed, so the bus acknowledges only durable
writes.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from nats.aio.msg import Msg

from zapflow.platform import catalogue, metrics
from zapflow.platform.connections import Connections
from zapflow.store.repository import ConversationStore, Event, Recorded, SequencedInbound
from zapflow.v1 import inbound_pb2, outbound_pb2, turn_pb2

RECORDED_STREAMS = (catalogue.INBOUND, catalogue.STATUS, catalogue.OUTBOUND, catalogue.EVENTS, catalogue.DEAD_LETTER)


@dataclass
class _Pending:
    event: Event
    outcome: asyncio.Future[Recorded]
    arrived_at: float


class WriteBatcher:
    """Gathers events from any number of handlers and writes them in batches, one at a time.

    A batch is written when `max_events` are waiting, or `linger_s` after the oldest of them
    arrived: a lone event waits at most that long, while under load batches fill up during the
    previous batch's write. Each caller gets its own event's outcome; an event that failed raises
    in its caller only.
    """

    def __init__(self, store: ConversationStore, max_events: int, linger_s: float) -> None:
        self._store = store
        self._max_events = max_events
        self._linger_s = linger_s
        self._pending: list[_Pending] = []
        self._full = asyncio.Event()
        # Runs while events are pending and ends when none are: there is nothing to stop.
        self._writer: asyncio.Task[None] | None = None

    async def record(self, event: Event) -> Recorded:
        """Write the event with others; returns once its batch committed, raises if it failed."""
        loop = asyncio.get_running_loop()
        pending = _Pending(event, loop.create_future(), loop.time())
        self._pending.append(pending)
        if len(self._pending) >= self._max_events:
            self._full.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_while_pending(), name="recorder-batcher")
        return await pending.outcome

    async def _write_while_pending(self) -> None:
        while self._pending:
            if len(self._pending) < self._max_events:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(self._pending[0].arrived_at + self._linger_s):
                        await self._full.wait()
            batch = self._pending[: self._max_events]
            del self._pending[: self._max_events]
            if len(self._pending) < self._max_events:
                self._full.clear()
            await self._write(batch)

    async def _write(self, batch: list[_Pending]) -> None:
        metrics.RECORDER_BATCH_EVENTS.observe(len(batch))
        try:
            outcomes = await self._store.record_batch([pending.event for pending in batch])
        except BaseException:
            # Cancelled, or a bug: no caller may wait forever. Nothing was acknowledged, so the bus
            # redelivers these events.
            for pending in batch:
                pending.outcome.cancel()
            raise
        for pending, outcome in zip(batch, outcomes, strict=True):
            if pending.outcome.done():  # its handler was cancelled meanwhile
                continue
            if isinstance(outcome, Exception):
                pending.outcome.set_exception(outcome)
            else:
                pending.outcome.set_result(outcome)


class Recorder:
    def __init__(self, batcher: WriteBatcher) -> None:
        self._batcher = batcher

    async def start(self, connections: Connections) -> None:
        await connections.consume(catalogue.RECORD_INBOUND, inbound_pb2.InboundMessage, self._inbound)
        await connections.consume(catalogue.RECORD_OUTBOUND, outbound_pb2.OutboundCommand, self._record)
        await connections.consume(catalogue.RECORD_STATUSES, inbound_pb2.StatusUpdate, self._record)
        await connections.consume(catalogue.RECORD_TURNS, turn_pb2.Turn, self._record)
        await connections.consume(catalogue.RECORD_RESULTS, outbound_pb2.OutboundResult, self._record)

    async def _inbound(self, message: inbound_pb2.InboundMessage, msg: Msg) -> None:
        await self._batcher.record(SequencedInbound(message, msg.metadata.sequence.stream))

    async def _record(self, event: Event, _: Msg) -> None:
        await self._batcher.record(event)
