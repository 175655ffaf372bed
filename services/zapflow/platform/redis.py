"""Shared state in Redis: idempotency keys and the per-number rate limiter.

Every key starts with zf:<tenant>: so a tenant's state can be found, counted and erased alone.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import BlockingConnectionPool, Redis

from zapflow.platform import metrics


def connect_redis(url: str, max_connections: int = 64) -> Redis:
    """A bounded pool: a burst waits for a free connection instead of failing with "Too many connections"."""
    pool = BlockingConnectionPool.from_url(
        url,
        decode_responses=True,
        health_check_interval=10,
        socket_connect_timeout=2,
        max_connections=max_connections,
        timeout=10,
    )
    return Redis(connection_pool=pool)


def tenant_key(tenant: str, *parts: str) -> str:
    return ":".join(("zf", tenant, *parts))


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
    """Throughput per WhatsApp number, shared by all gateway replicas."""

    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(_GCRA_RESERVE)

    async def acquire(self, tenant: str, phone_number_id: str, per_second: float, burst: int = 1) -> float:
        """Reserve the next send slot of this number and wait for it; return the time waited."""
        interval_ms = 1000.0 / per_second
        key = tenant_key(tenant, "rate", phone_number_id)
        wait_ms = int(await self._script(keys=[key], args=[interval_ms, interval_ms * (burst - 1)]))
        waited = max(0, wait_ms) / 1000
        if waited:
            # Pacing, not synchronisation: the reserved slot is this far away.
            await asyncio.sleep(waited)
        metrics.RATE_LIMIT_WAIT_SECONDS.labels(tenant).observe(waited)
        return waited
