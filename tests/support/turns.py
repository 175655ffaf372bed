"""Turn events as the conversation engine publishes them, read back from JetStream; what a responder
reports through its error hook."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from nats.js import JetStreamContext

from zapflow.platform import catalogue
from zapflow.v1 import turn_pb2


async def turns_covering(
    js: JetStreamContext, tenant: str, contact: str, wamids: Collection[str], timeout: float = 20
) -> list[turn_pb2.Turn]:
    """The contact's turns, from the first, up to the one that settles the last of `wamids`."""
    subscription = await js.subscribe(catalogue.turn_subject(tenant, contact), stream=catalogue.EVENTS.name)
    turns: list[turn_pb2.Turn] = []
    try:
        while not set(wamids) <= {wamid for turn in turns for wamid in turn.inbound_wamids}:
            turns.append(turn_pb2.Turn.FromString((await subscription.next_msg(timeout=timeout)).data))
    finally:
        await subscription.unsubscribe()
    return turns


@dataclass
class ErrorLog:
    """A responder's `on_error(tenant, kind)` hook that keeps every call."""

    calls: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, tenant: str, kind: str) -> None:
        self.calls.append((tenant, kind))
