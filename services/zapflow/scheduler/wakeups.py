"""When a campaign's runner is called: a `campaign` timer per campaign, and the scheduler's tick as a safety net.

A campaign is woken at its start (the admin API schedules it as it creates it), sends one slice
(`CampaignRunner.advance`), and schedules its next wake-up for when the runner asks (the next
slice, or the moment the messaging limit frees a place). A wake-up lost to a crash between the
slice and the schedule is found by the tick: every active campaign whose `next_at` passed is woken
again, so one created by the command line (which writes the store directly) starts within one
scheduler interval. Two wake-ups of one campaign at once are harmless: the runner claims its
recipients with row locks, and every send has its own idempotency key.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from zapflow.platform.logging import get_logger
from zapflow.scheduler.campaigns import CampaignRunner
from zapflow.scheduler.timers import Fired, LatePolicy, Timers

log = get_logger(__name__)

CAMPAIGN = "campaign"
# However late: a campaign wakes to carry on where it stopped.
CAMPAIGN_LATE = LatePolicy(max_lateness_s=None)


class CampaignWakeups:
    def __init__(
        self, runner: CampaignRunner, timers: Timers, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._runner = runner
        self._timers = timers
        self._clock = clock

    async def wake(self, tenant: str, campaign_id: str, at: datetime) -> None:
        await self._timers.schedule(CAMPAIGN, tenant, campaign_id, at)

    async def on_due(self, fired: Fired) -> None:
        """Send the campaign's next slice and wake it again when the runner says."""
        next_at = await self._runner.advance(fired.key, self._clock())
        if next_at is not None:
            await self.wake(fired.tenant, fired.key, next_at)

    async def wake_due(self, now: datetime) -> int:
        """The tick's safety net: wake every active campaign whose next slice is overdue."""
        due = await self._runner.store.due(now)
        for campaign_id in due:
            campaign = await self._runner.store.get(campaign_id)
            if campaign is not None:
                await self.wake(campaign.tenant, campaign.id, now)
        return len(due)
