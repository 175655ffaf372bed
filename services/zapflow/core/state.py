"""Shared state in Redis: idempotency keys and the per-number rate limiter.

Every key starts with zf:<tenant>: so a tenant's state can be found, counted and erased alone.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from zapflow.core import metrics


def connect_redis(url: str) -> Redis:
    return Redis.from_url(url, decode_responses=True, health_check_interval=10, socket_connect_timeout=2)


def tenant_key(tenant: str, *parts: str) -> str:
    return ":".join(("zf", tenant, *parts))


# GCRA (generic cell rate algorithm) on the Redis clock, so every replica shares one schedule.
# Returns 0 when a send may go now, otherwise the milliseconds to wait before asking again.
_GCRA = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + tonumber(now_parts[2]) / 1000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allowed_at = tat - burst
if now < allowed_at then return math.ceil(allowed_at - now) end
local new_tat = tat + interval
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return 0
"""


class RateLimiter:
    """Throughput per WhatsApp number, shared by all gateway replicas."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._script = redis.register_script(_GCRA)

    async def acquire(self, tenant: str, phone_number_id: str, per_second: float, burst: int = 1) -> float:
        """Wait until one more message may go to Meta from this number; return the time waited."""
        interval_ms = 1000.0 / per_second
        key = tenant_key(tenant, "rate", phone_number_id)
        waited = 0.0
        while True:
            wait_ms = int(await self._script(keys=[key], args=[interval_ms, interval_ms * (burst - 1)]))
            if wait_ms <= 0:
                break
            # Pacing, not synchronisation: the limiter's answer is how long to hold off.
            await asyncio.sleep(wait_ms / 1000)
            waited += wait_ms / 1000
        metrics.RATE_LIMIT_WAIT_SECONDS.labels(tenant).observe(waited)
        return waited
