"""What the bench reads back from the system under test: turns, sends and consumer backlogs."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
from google.protobuf.timestamp_pb2 import Timestamp
from nats.js import JetStreamContext
from redis.asyncio import Redis

from bench import accounting
from bench.figures import backlogs
from bench.results import Backlog, RecorderLag
from bench.stack import Stack
from zapflow.platform import catalogue, keys
from zapflow.v1 import turn_pb2

RECORDER_CONSUMERS = tuple(
    (spec.stream.name, spec.durable) for spec in catalogue.ALL_CONSUMERS if spec.service == catalogue.RECORDER_SERVICE
)


def _seconds(stamp: Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


async def read_turns(js: JetStreamContext) -> list[accounting.TurnRecord]:
    turns_subject = catalogue.events_of(catalogue.TURN)
    info = await js.stream_info(catalogue.EVENTS.name, subjects_filter=turns_subject)
    expected = sum((info.state.subjects or {}).values())
    turns: list[accounting.TurnRecord] = []
    if not expected:
        return turns
    subscription = await js.subscribe(turns_subject, stream=catalogue.EVENTS.name, ordered_consumer=True)
    try:
        while len(turns) < expected:
            msg = await subscription.next_msg(timeout=10)
            turn = turn_pb2.Turn.FromString(msg.data)
            turns.append(
                accounting.TurnRecord(
                    turn_id=turn.turn_id,
                    wamids=tuple(turn.inbound_wamids),
                    duplicate_wamids=tuple(turn.duplicate_wamids),
                    started_at=_seconds(turn.started_at),
                    closed_at=_seconds(turn.closed_at),
                    answered_at=_seconds(turn.answered_at),
                )
            )
    finally:
        await subscription.unsubscribe()
    return turns


async def read_sends(sandbox_url: str) -> list[accounting.SendRecord]:
    async with httpx.AsyncClient(timeout=60) as client:
        answer = await client.get(f"{sandbox_url}/sandbox/messages")
        answer.raise_for_status()
    sends = []
    for message in answer.json()["messages"]:
        context = (message.get("payload") or {}).get("context") or {}
        sends.append(accounting.SendRecord(message["to"], context.get("message_id"), float(message["timestamp"])))
    return sends


async def sample_backlogs(
    js: JetStreamContext, redis_url: str, stop: asyncio.Event, record: bool, interval_s: float = 0.5
) -> dict[str, Backlog]:
    """Where work queues up during the end-to-end phase, sampled twice a second until `stop`.

    inbound / outbound: messages the conversation service / egress has not fetched yet, plus
    those it holds unacknowledged (the conversation holds a message until its turn is answered).
    overdue: contacts whose debounce deadline passed more than 50 ms ago and whose turn is not
    finished (waiting for the closer, or running). recorder (with --recorder): events of every
    stream the recorder has not written yet.
    """
    redis = Redis.from_url(redis_url)
    series: dict[str, list[int]] = {"inbound_pending": [], "inbound_held": [], "outbound_pending": [], "overdue": []}
    if record:
        series["recorder_pending"] = []
    try:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                inbound = await js.consumer_info(catalogue.INBOUND.name, catalogue.CONVERSATION_INBOUND.durable)
                outbound = await js.consumer_info(catalogue.OUTBOUND.name, catalogue.EGRESS.durable)
                overdue = await redis.zcount(keys.DUE, "-inf", int(time.time() * 1000) - 50)
                store_backlog = await recorder_backlog(js) if record else None
                series["inbound_pending"].append(int(inbound.num_pending or 0))
                series["inbound_held"].append(int(inbound.num_ack_pending or 0))
                series["outbound_pending"].append(int((outbound.num_pending or 0) + (outbound.num_ack_pending or 0)))
                series["overdue"].append(int(overdue))
                if store_backlog is not None:
                    series["recorder_pending"].append(store_backlog)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
    finally:
        await redis.aclose()
    return backlogs(series)


async def recorder_backlog(js: JetStreamContext) -> int:
    """Events the recorder has not written yet, over its consumers."""
    backlog = 0
    for stream, durable in RECORDER_CONSUMERS:
        info = await js.consumer_info(stream, durable)
        backlog += int((info.num_pending or 0) + (info.num_ack_pending or 0))
    return backlog


async def recorder_catch_up(js: JetStreamContext, stack: Stack, since: float, timeout_s: float) -> RecorderLag:
    """Wait (bounded) until the recorder has written everything; how far behind it was."""
    left = await recorder_backlog(js)
    deadline = time.monotonic() + timeout_s
    backlog = left
    while backlog and time.monotonic() < deadline:
        stack.check_alive()
        await asyncio.sleep(0.5)  # polling the consumers' own state until the recorder is idle
        backlog = await recorder_backlog(js)
    return RecorderLag(
        backlog_when_settled=left,
        caught_up_s_after_last_webhook=None if backlog else round(time.monotonic() - since, 1),
    )


async def consumers_idle(js: JetStreamContext) -> bool:
    for consumer in (catalogue.CONVERSATION_INBOUND, catalogue.EGRESS):
        info = await js.consumer_info(consumer.stream.name, consumer.durable)
        if info.num_pending or info.num_ack_pending:
            return False
    return True


async def settle(
    js: JetStreamContext, stack: Stack, accepted: list[str], maybe: list[str], timeout_s: float
) -> tuple[list[accounting.TurnRecord], list[accounting.SendRecord], accounting.Accounting]:
    """Wait (bounded) until the system is idle and the accounting is complete; return the records."""
    deadline = time.monotonic() + timeout_s
    while True:
        stack.check_alive()
        late = time.monotonic() > deadline
        if late or await consumers_idle(js):
            turns = await read_turns(js)
            sends = await read_sends(stack.sandbox_url)
            checked = accounting.account(accepted, turns, sends, maybe)
            if checked.ok or late:
                return turns, sends, checked
        await asyncio.sleep(0.5)  # polling the system's own records until it is idle
