"""The per-number send rate and per-customer pacing, shared by every gateway replica through Redis."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from zapflow.platform import metrics
from zapflow.platform.keys import ContactKeys, rate_key
from zapflow.tenants.model import RateLimitSpec

# GCRA (generic cell rate algorithm) on the Redis clock, so every replica shares one schedule.
# Each call reserves the next free slot and returns how many milliseconds away it is: a waiter
# sleeps once instead of polling.
_GCRA = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + tonumber(now_parts[2]) / 1000
local function reserve(key, interval, burst)
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local slot = tat - burst
  if slot < now then slot = now end
  local new_tat = tat + interval
  redis.call('SET', key, tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
  return math.ceil(slot - now)
end
"""
_GCRA_RESERVE = _GCRA + "return reserve(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))"
# A message to a customer: their pacing slot, then the number's, in one round trip. When the
# customer's slot is ahead, the number's is not reserved yet (it would go unused meanwhile):
# returns {customer wait, -1}, and the sender reserves the number's slot after waiting.
_SEND_RESERVE = (
    _GCRA
    + """
local pace_wait = 0
if tonumber(ARGV[1]) > 0 then pace_wait = reserve(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])) end
if pace_wait > 0 then return {pace_wait, -1} end
return {0, reserve(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]))}
"""
)


class RateLimiter:
    """Throughput per WhatsApp number and pacing per customer, shared by all gateway replicas."""

    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(_GCRA_RESERVE)
        self._send_script = redis.register_script(_SEND_RESERVE)

    async def acquire(self, tenant: str, phone_number_id: str, per_second: float) -> float:
        """Reserve the next send slot of this number and wait for it; return the time waited."""
        wait_ms = int(await self._script(keys=[rate_key(tenant, phone_number_id)], args=[1000.0 / per_second, 0]))
        waited = await _wait(wait_ms)
        metrics.RATE_LIMIT_WAIT_SECONDS.labels(tenant).observe(waited)
        return waited

    async def send_to(self, contact: ContactKeys, phone_number_id: str, limits: RateLimitSpec) -> float:
        """Wait for the customer's pacing slot (WhatsApp's pair rate), then the number's; return the time waited.

        A burst of messages to one customer goes out at once, so a turn's replies are never delayed; only a
        longer run is spaced by the interval.
        """
        pace_ms = limits.per_customer_interval_seconds * 1000
        rate_ms = 1000.0 / limits.messages_per_second
        keys = [contact.pace, rate_key(contact.tenant, phone_number_id)]
        args = [pace_ms, pace_ms * (limits.per_customer_burst - 1), rate_ms, 0]
        pace_wait_ms, rate_wait_ms = (int(v) for v in await self._send_script(keys=keys, args=args))
        paced = await _wait(pace_wait_ms)
        metrics.PACING_WAIT_SECONDS.labels(contact.tenant).observe(paced)
        if rate_wait_ms < 0:
            return paced + await self.acquire(contact.tenant, phone_number_id, limits.messages_per_second)
        waited = await _wait(rate_wait_ms)
        metrics.RATE_LIMIT_WAIT_SECONDS.labels(contact.tenant).observe(waited)
        return paced + waited


async def _wait(wait_ms: int) -> float:
    waited = max(0, wait_ms) / 1000
    if waited:
        # Pacing, not synchronisation: the reserved slot is this far away.
        await asyncio.sleep(waited)
    return waited
