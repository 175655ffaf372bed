"""Streams and consumers on a real nats-server: idempotent declaration, retries, dead letters."""

from __future__ import annotations

import asyncio
import dataclasses

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import REGISTRY

from zapflow.platform import bus, catalogue
from zapflow.v1 import inbound_pb2, turn_pb2

TENANT = "bus-test"


async def test_streams_are_declared_idempotently_and_updated_in_place(js: JetStreamContext) -> None:
    await bus.ensure_streams(js, catalogue.ALL_STREAMS)
    await bus.ensure_streams(js, catalogue.ALL_STREAMS)
    longer = dataclasses.replace(catalogue.INBOUND, max_age_s=catalogue.INBOUND.max_age_s * 2)
    await bus.ensure_stream(js, longer)

    info = await js.stream_info(catalogue.INBOUND.name)
    assert info.config.max_age == longer.max_age_s
    assert info.config.storage == "file"
    assert info.config.duplicate_window == 120.0
    assert info.config.discard == "new"  # a full inbound stream refuses, it never drops the oldest


async def test_a_republished_fact_is_stored_once_and_counted(js: JetStreamContext) -> None:
    await bus.ensure_stream(js, catalogue.INBOUND)
    duplicates = {"tenant": TENANT, "layer": "jetstream"}
    before = REGISTRY.get_sample_value("zapflow_bus_duplicates_dropped_total", duplicates) or 0.0
    event = inbound_pb2.InboundMessage(tenant=TENANT, wamid="wamid.DUP")
    first = await bus.publish(js, catalogue.inbound_subject(TENANT, "1"), event, "wamid.DUP")
    second = await bus.publish(js, catalogue.inbound_subject(TENANT, "1"), event, "wamid.DUP")
    assert (first.duplicate, second.duplicate) == (None, True)
    assert first.seq == second.seq
    assert REGISTRY.get_sample_value("zapflow_bus_duplicates_dropped_total", duplicates) == before + 1


async def consume_until_dead_letter(
    js: JetStreamContext, spec: catalogue.ConsumerSpec, payload: bytes, handler: bus.Handler[inbound_pb2.InboundMessage]
) -> turn_pb2.DeadLetter:
    await bus.ensure_streams(js, (catalogue.INBOUND, catalogue.DEAD_LETTER))
    letters = await js.subscribe(catalogue.dead_letters_of(spec.service), stream=catalogue.DEAD_LETTER.name)
    consumer = bus.Consumer(js, spec, inbound_pb2.InboundMessage, handler)
    await consumer.start()
    try:
        await js.publish(catalogue.inbound_subject(TENANT, "2"), payload, headers={bus.MSG_ID_HEADER: "wamid.POISON"})
        letter = turn_pb2.DeadLetter.FromString((await letters.next_msg(timeout=20)).data)
    finally:
        await consumer.stop()
        await letters.unsubscribe()
    return letter


async def test_a_failing_message_is_retried_with_backoff_then_dead_lettered(js: JetStreamContext) -> None:
    spec = catalogue.ConsumerSpec(
        catalogue.INBOUND, "retry-test", catalogue.INBOUND.subjects[0], "bustest", max_attempts=3, backoff_s=(0.05, 0.1)
    )
    attempts: list[int] = []

    async def always_fails(_: inbound_pb2.InboundMessage, msg: Msg) -> None:
        attempts.append(msg.metadata.num_delivered)
        raise RuntimeError("downstream is broken")

    dead = {"tenant": TENANT, "consumer": "retry-test"}
    before = REGISTRY.get_sample_value("zapflow_bus_dead_letters_total", dead) or 0.0
    letter = await consume_until_dead_letter(
        js, spec, inbound_pb2.InboundMessage(wamid="x").SerializeToString(), always_fails
    )

    assert attempts == [1, 2, 3]
    assert letter.original_subject == catalogue.inbound_subject(TENANT, "2")
    assert letter.message_id == "wamid.POISON"
    assert "downstream is broken" in letter.reason
    assert letter.deliveries == 3
    assert REGISTRY.get_sample_value("zapflow_bus_dead_letters_total", dead) == before + 1


async def test_an_undecodable_message_is_dead_lettered_at_once(js: JetStreamContext) -> None:
    spec = catalogue.ConsumerSpec(catalogue.INBOUND, "decode-test", catalogue.INBOUND.subjects[0], "bustest")
    handled = asyncio.Event()

    async def never_called(_: inbound_pb2.InboundMessage, __: Msg) -> None:
        handled.set()

    letter = await consume_until_dead_letter(js, spec, b"\xff\xff not protobuf", never_called)
    assert "undecodable" in letter.reason
    assert letter.deliveries == 1
    assert not handled.is_set()


async def test_reject_dead_letters_without_retrying(js: JetStreamContext) -> None:
    spec = catalogue.ConsumerSpec(catalogue.INBOUND, "reject-test", catalogue.INBOUND.subjects[0], "bustest")
    calls = 0

    async def rejects(_: inbound_pb2.InboundMessage, __: Msg) -> None:
        nonlocal calls
        calls += 1
        raise bus.Reject("cannot ever work")

    letter = await consume_until_dead_letter(js, spec, b"", rejects)
    assert (letter.reason, calls) == ("cannot ever work", 1)
