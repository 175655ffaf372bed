"""The scheduler's ticker: runs the jobs while this replica holds the lease in Redis.

Several replicas may run: the lease lets one of them run the jobs at a time; the others stand
by and take over when it stops renewing.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from datetime import UTC, datetime

from redis.asyncio import Redis

from zapflow.platform.keys import SCHEDULER_LEADER
from zapflow.platform.logging import get_logger
from zapflow.scheduler import rollups
from zapflow.scheduler.jobs import Jobs

log = get_logger(__name__)

# Renew the lease if we hold it; take it if nobody does. Returns 1 when we hold it.
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


class Scheduler:
    """Ticks the jobs while this replica holds the lease."""

    def __init__(self, jobs: Jobs, redis: Redis, interval_s: float) -> None:
        self._jobs = jobs
        self._redis = redis
        self._lease = redis.register_script(_LEASE)
        self._interval_s = interval_s
        self._identity = secrets.token_hex(8)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scheduler")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                if not await self._hold_lease():
                    rollups.clear()  # another replica exports the figures now
                else:
                    # Renewed while the jobs run: a long archival must not let another replica in.
                    keeper = asyncio.create_task(self._keep_lease())
                    try:
                        await self._jobs.run_all(datetime.now(UTC), self._claim_rollup)
                    finally:
                        keeper.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await keeper
            except Exception:  # Redis unreachable: try again at the next tick
                log.exception("scheduler tick failed")
            # The interval is the schedule itself, not a wait for something to happen.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval_s)

    async def _claim_rollup(self, now: datetime) -> bool:
        return await rollups.claim_bucket(self._redis, now, self._interval_s)

    async def _hold_lease(self) -> bool:
        """Take or renew the lease for three intervals; whether this replica holds it."""
        return bool(await self._lease(keys=[SCHEDULER_LEADER], args=[self._identity, int(self._interval_s * 3000)]))

    async def _keep_lease(self) -> None:
        while True:
            # Pacing: renew well before the lease's three intervals run out.
            await asyncio.sleep(self._interval_s)
            await self._hold_lease()
