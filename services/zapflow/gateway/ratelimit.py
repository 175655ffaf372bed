"""The per-number send rate, shared by every gateway replica through Redis."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from zapflow.platform import metrics
from zapflow.platform.keys import ContactKeys, rate_key

# GCRA (generic cell rate algorithm) on the Redis clock, so every replica shares one schedule.
# Each call reserves the next free slot and returns how many milliseconds away it is: a waiter
# sleeps once instead of polling.
_GCRA_RESERVE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + tonumber(now_parts[2]) / 1000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local slot = tat - burst
if slot < now then slot = now end
local new_tat = tat + interval
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return math.ceil(slot - now)
"""


class RateLimiter:
    """Throughput per WhatsApp number and pacing per customer, shared by all gateway replicas."""

    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(_GCRA_RESERVE)

    async def acquire(self, tenant: str, phone_number_id: str, per_second: float, burst: int = 1) -> float:
        """Reserve the next send slot of this number and wait for it; return the time waited."""
        waited = await self._reserve(rate_key(tenant, phone_number_id), 1000.0 / per_second, burst)
        metrics.RATE_LIMIT_WAIT_SECONDS.labels(tenant).observe(waited)
        return waited

    async def pace(self, contact: ContactKeys, interval_s: float, burst: int) -> float:
        """Reserve the next slot for a message to this customer (WhatsApp's pair rate) and wait for it.

        A burst goes out at once, so a turn's replies are never delayed; only a longer run of
        messages to one customer is spaced by the interval.
        """
        if interval_s <= 0:
            return 0.0
        waited = await self._reserve(contact.pace, interval_s * 1000, burst)
        metrics.PACING_WAIT_SECONDS.labels(contact.tenant).observe(waited)
        return waited

    async def _reserve(self, key: str, interval_ms: float, burst: int) -> float:
        wait_ms = int(await self._script(keys=[key], args=[interval_ms, interval_ms * (burst - 1)]))
        waited = max(0, wait_ms) / 1000
        if waited:
            # Pacing, not synchronisation: the reserved slot is this far away.
            await asyncio.sleep(waited)
        return waited
