"""The web chat's live feed: what the bot does to a contact, fanned out to the open chat pages."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from zapflow.platform.logging import get_logger

log = get_logger(__name__)

# "message": the bot sent something; "read": the bot marked a customer message as read;
# "typing": the bot showed the typing indicator.
ChatEventKind = Literal["message", "read", "typing"]
_QUEUE_SIZE = 1000


@dataclass(frozen=True)
class ChatEvent:
    kind: ChatEventKind
    data: dict[str, Any]


class ChatHub:
    """Subscribers per (phone number id, contact wa_id); each gets its own bounded queue."""

    def __init__(self) -> None:
        self._subscribers: dict[tuple[str, str], set[asyncio.Queue[ChatEvent]]] = {}

    @contextmanager
    def subscribe(self, phone_number_id: str, wa_id: str) -> Iterator[asyncio.Queue[ChatEvent]]:
        key = (phone_number_id, wa_id)
        queue: asyncio.Queue[ChatEvent] = asyncio.Queue(maxsize=_QUEUE_SIZE)
        self._subscribers.setdefault(key, set()).add(queue)
        try:
            yield queue
        finally:
            queues = self._subscribers[key]
            queues.discard(queue)
            if not queues:
                del self._subscribers[key]

    def publish(self, phone_number_id: str, wa_id: str, event: ChatEvent) -> None:
        for queue in self._subscribers.get((phone_number_id, wa_id), ()):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                # A page that stopped reading must not hold the sandbox's memory hostage.
                log.warning("chat subscriber too slow, event dropped", kind=event.kind)
