"""Keeps the relational store current from the bus.

Each kind of event has its own durable consumer, so recording never slows the engine down and a
database outage only delays the store: messages wait in JetStream and are retried. Every write
is idempotent, so a redelivery never makes a second row.
"""

from __future__ import annotations

from nats.aio.msg import Msg

from zapflow.core import bus
from zapflow.core.runtime import ServiceRuntime
from zapflow.store.repository import ConversationStore
from zapflow.v1 import inbound_pb2, outbound_pb2, turn_pb2

SERVICE = "recorder"
RECORDED_STREAMS = (bus.INBOUND, bus.STATUS, bus.OUTBOUND, bus.EVENTS, bus.DEAD_LETTER)


def _spec(stream: bus.StreamSpec, durable: str, subjects: str) -> bus.ConsumerSpec:
    return bus.ConsumerSpec(stream=stream, durable=durable, filter_subject=subjects, service=SERVICE, batch=256)


INBOUND = _spec(bus.INBOUND, "store-inbound", "zf.in.>")
OUTBOUND = _spec(bus.OUTBOUND, "store-outbound", "zf.out.>")
STATUSES = _spec(bus.STATUS, "store-statuses", "zf.status.>")
TURNS = _spec(bus.EVENTS, "store-turns", "zf.evt.turn.>")
RESULTS = _spec(bus.EVENTS, "store-results", "zf.evt.sent.>")


class Recorder:
    def __init__(self, store: ConversationStore) -> None:
        self._store = store

    async def start(self, runtime: ServiceRuntime) -> None:
        await runtime.consume(INBOUND, inbound_pb2.InboundMessage, self._inbound)
        await runtime.consume(OUTBOUND, outbound_pb2.OutboundCommand, self._outbound)
        await runtime.consume(STATUSES, inbound_pb2.StatusUpdate, self._status)
        await runtime.consume(TURNS, turn_pb2.Turn, self._turn)
        await runtime.consume(RESULTS, outbound_pb2.OutboundResult, self._result)

    async def _inbound(self, message: inbound_pb2.InboundMessage, msg: Msg) -> None:
        await self._store.record_inbound(message, msg.metadata.sequence.stream)

    async def _outbound(self, command: outbound_pb2.OutboundCommand, _: Msg) -> None:
        await self._store.record_outbound(command)

    async def _status(self, update: inbound_pb2.StatusUpdate, _: Msg) -> None:
        await self._store.record_status(update)

    async def _turn(self, turn: turn_pb2.Turn, _: Msg) -> None:
        await self._store.record_turn(turn)

    async def _result(self, result: outbound_pb2.OutboundResult, _: Msg) -> None:
        await self._store.record_outbound_result(result)
