"""Live feeds for open pages: events fanned out to every subscriber of a key, each with a bounded queue.

The sandbox's web chat (per contact) and the agent inbox (per tenant) both use it. A subscriber
that stops reading loses events rather than holding the process's memory: a page re-reads the
state it shows when it reconnects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from zapflow.platform.logging import get_logger

log = get_logger(__name__)

K = TypeVar("K", bound=Hashable)
E = TypeVar("E")
QUEUE_SIZE = 1000


class Fanout(Generic[K, E]):
    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self._queue_size = queue_size
        self._subscribers: dict[K, set[asyncio.Queue[E]]] = {}

    @contextmanager
    def subscribe(self, key: K) -> Iterator[asyncio.Queue[E]]:
        queue: asyncio.Queue[E] = asyncio.Queue(maxsize=self._queue_size)
        self._subscribers.setdefault(key, set()).add(queue)
        try:
            yield queue
        finally:
            queues = self._subscribers[key]
            queues.discard(queue)
            if not queues:
                del self._subscribers[key]

    def publish(self, key: K, event: E) -> None:
        for queue in self._subscribers.get(key, ()):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("live feed subscriber too slow, event dropped", feed=type(self).__name__)

    def subscribers(self, key: K) -> int:
        return len(self._subscribers.get(key, ()))
