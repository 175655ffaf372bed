"""Held messages: acknowledged through a settled sequence; a failed ack or heartbeat is counted, not fatal."""

from __future__ import annotations

from nats.errors import ConnectionClosedError
from prometheus_client import REGISTRY

from zapflow.conversation.ledger import HeldMessages
from zapflow.platform.keys import ContactKeys

ALICE = ContactKeys("acme", "5511900000001")
BOB = ContactKeys("acme", "5511900000002")


class FakeMsg:
    """A JetStream message as far as the ledger uses it; `broken` ones fail like a closed connection."""

    def __init__(self, broken: bool = False) -> None:
        self.broken = broken
        self.acked = False
        self.heartbeats = 0

    async def ack(self) -> None:
        if self.broken:
            raise ConnectionClosedError
        self.acked = True

    async def in_progress(self) -> None:
        if self.broken:
            raise ConnectionClosedError
        self.heartbeats += 1


def failures(kind: str) -> float:
    return REGISTRY.get_sample_value("zapflow_conversation_engine_failures_total", {"kind": kind}) or 0.0


async def test_a_turn_acknowledges_its_contacts_messages_through_its_last_sequence() -> None:
    held = HeldMessages()
    first, second, later, other = FakeMsg(), FakeMsg(), FakeMsg(), FakeMsg()
    for keys, seq, msg in ((ALICE, 1, first), (BOB, 2, other), (ALICE, 3, second), (ALICE, 9, later)):
        held.add(keys, seq, msg)  # type: ignore[arg-type]

    await held.acknowledge_through(ALICE, 3)

    assert [m.acked for m in (first, second, later, other)] == [True, True, False, False]
    assert await held.keep_alive() == {ALICE, BOB}
    assert (later.heartbeats, other.heartbeats, first.heartbeats) == (1, 1, 0)
    await held.acknowledge_through(ALICE, 9)
    await held.acknowledge_through(BOB, 2)
    assert await held.keep_alive() == set()


async def test_failed_heartbeats_and_acknowledgements_are_counted_and_the_others_still_go() -> None:
    held = HeldMessages()
    broken, healthy = FakeMsg(broken=True), FakeMsg()
    held.add(ALICE, 1, broken)  # type: ignore[arg-type]
    held.add(ALICE, 2, healthy)  # type: ignore[arg-type]
    heartbeats_before, acks_before = failures("heartbeat"), failures("ack")

    assert await held.keep_alive() == {ALICE}
    assert failures("heartbeat") == heartbeats_before + 1
    assert healthy.heartbeats == 1

    await held.acknowledge_through(ALICE, 2)
    assert failures("ack") == acks_before + 1
    assert healthy.acked
    # Released all the same: redelivery brings the message back, and ingest finds it settled.
    assert await held.keep_alive() == set()
