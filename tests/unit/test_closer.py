"""The closer survives what fails around it: each failure is logged, counted, and the contact taken again."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from prometheus_client import REGISTRY

from tests.support.platform import eventually
from zapflow.conversation.closer import Closer
from zapflow.conversation.settings import ConversationSettings
from zapflow.platform.keys import ContactKeys

ALICE = ContactKeys("acme", "5511900000001")


class FakeTurnState:
    """The closer's side of the turn state: one contact always due, every lock granted."""

    def __init__(self, scan_fails: bool = False, extension_fails: bool = False) -> None:
        self.scan_fails = scan_fails
        self.extension_fails = extension_fails
        self.extension_tried = asyncio.Event()

    async def due(self, now_ms: int, limit: int) -> list[ContactKeys]:
        if self.scan_fails:
            raise ConnectionError("redis is away")
        return [ALICE]

    async def lock(self, contacts: Sequence[tuple[ContactKeys, str]], lease_ms: int) -> list[bool]:
        return [True for _ in contacts]

    async def extend_lock(self, keys: ContactKeys, token: str, lease_ms: int) -> None:
        self.extension_tried.set()
        if self.extension_fails:
            raise ConnectionError("redis is away")

    async def postpone(self, contacts: Sequence[ContactKeys], until_ms: int) -> None:
        raise AssertionError("no contact is busy here")


def failures(kind: str) -> float:
    return REGISTRY.get_sample_value("zapflow_conversation_engine_failures_total", {"kind": kind}) or 0.0


async def test_a_failed_turn_is_counted_and_its_contact_taken_again() -> None:
    tokens: list[str] = []

    async def failing_turn(keys: ContactKeys, token: str) -> None:
        tokens.append(token)
        raise RuntimeError("the responder's store is away")

    closer = Closer(FakeTurnState(), ConversationSettings(), failing_turn)  # type: ignore[arg-type]
    before = failures("turn")
    await closer.close_once()
    await closer.stop()  # waits for the running turn
    assert failures("turn") == before + 1

    await closer.close_once()
    await closer.stop()
    assert len(set(tokens)) == 2  # the contact was free to run again, under a new lock


async def test_a_failed_lock_extension_is_counted_and_the_turn_still_ends() -> None:
    state = FakeTurnState(extension_fails=True)
    turns = 0

    async def turn_outliving_a_lease_third(keys: ContactKeys, token: str) -> None:
        nonlocal turns
        turns += 1
        await asyncio.wait_for(state.extension_tried.wait(), timeout=10)

    settings = ConversationSettings(turn_lease_s=0.03)
    closer = Closer(state, settings, turn_outliving_a_lease_third)  # type: ignore[arg-type]
    before = failures("lock")
    await closer.close_once()
    await closer.stop()
    assert failures("lock") > before

    await closer.close_once()
    await closer.stop()
    assert turns == 2


async def test_a_failed_scan_of_the_due_set_is_counted_and_the_loop_goes_on() -> None:
    async def never(keys: ContactKeys, token: str) -> None:
        raise AssertionError("nothing is due while Redis is away")

    closer = Closer(FakeTurnState(scan_fails=True), ConversationSettings(), never)  # type: ignore[arg-type]
    before = failures("closer")
    closer.start()
    try:

        async def failed_twice() -> bool:
            return failures("closer") >= before + 2

        await eventually(failed_twice, timeout=10, what="two failed scans")
    finally:
        await closer.stop()
