"""A contact's last turns for a responder's context: a Redis list in front of the relational store.

The store (written by the recorder) holds the history; the Redis list is a short write-through
cache, appended by every turn as it settles, so a live conversation never waits for the
recorder, and an idle one (or one Redis lost) is read back from the store.
"""

from __future__ import annotations

import json
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from zapflow.platform import metrics
from zapflow.platform.keys import ContactKeys
from zapflow.platform.logging import get_logger
from zapflow.whatsapp.messages import HistoryEntry

log = get_logger(__name__)


class HistorySource(Protocol):
    """Where history comes from when Redis has none: the relational store."""

    async def history(self, tenant: str, contact: str, turns: int) -> tuple[HistoryEntry, ...]: ...


def _encode(entry: HistoryEntry) -> str:
    return json.dumps({"role": entry.role, "text": entry.text})


def _decode(raw: str | bytes) -> HistoryEntry:
    return HistoryEntry(**json.loads(raw))


class HistoryCache:
    def __init__(self, redis: Redis, store: HistorySource | None, max_turns: int, ttl_s: int) -> None:
        self._redis = redis
        self._store = store
        self._max_turns = max_turns
        self._ttl_s = ttl_s

    async def last_turns(self, keys: ContactKeys, turns: int) -> tuple[HistoryEntry, ...]:
        """The last turns, from Redis; from the store when Redis has none (a restart, or idle too long)."""
        if turns <= 0:
            return ()
        raw = await self._redis.lrange(keys.history, -2 * turns, -1)
        if raw or self._store is None:
            return tuple(_decode(entry) for entry in raw)
        try:
            stored = await self._store.history(keys.tenant, keys.contact, turns)
        except Exception as error:  # the store is away: answer without context rather than not at all
            log.warning("history unavailable from the store", tenant=keys.tenant, error=type(error).__name__)
            metrics.ENGINE_FAILURES.labels("history").inc()
            return ()
        if stored:
            # Fill the cache so the next turn reads it in Redis.
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.rpush(keys.history, *(_encode(entry) for entry in stored))
                pipe.expire(keys.history, self._ttl_s)
                await pipe.execute()
        return stored

    def queue_append(self, pipe: Pipeline, keys: ContactKeys, exchange: tuple[HistoryEntry, ...]) -> None:
        """Queue a turn's exchange on the pipeline that settles it, keeping the newest turns only."""
        if not exchange:
            return
        pipe.rpush(keys.history, *(_encode(entry) for entry in exchange))
        pipe.ltrim(keys.history, -2 * self._max_turns, -1)
        pipe.expire(keys.history, self._ttl_s)
