"""`zapflow scheduler`: runs the jobs on a timer, and serves the admin API's erasures.

The erasures live here because this process already owns the analytics file: DuckDB lets one
process write a file at a time, and the jobs and erasures take turns on it inside one process
instead of waiting on each other's file lock. Every replica serves the admin API; one at a time
runs the jobs (`leader.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends

from zapflow.platform import catalogue
from zapflow.platform.connections import Connections, Needs, connected
from zapflow.platform.service import Runtime, Service, runtime_dependency
from zapflow.platform.settings import CoreSettings
from zapflow.privacy.api import erasures_router
from zapflow.privacy.erasure import Eraser
from zapflow.scheduler.campaign_api import campaigns_router
from zapflow.scheduler.campaigns import CampaignResults, CampaignRunner
from zapflow.scheduler.jobs import Jobs
from zapflow.scheduler.leader import Scheduler
from zapflow.scheduler.reengage import REENGAGE, REENGAGE_LATE, Reengagement
from zapflow.scheduler.settings import SchedulerSettings
from zapflow.scheduler.timers import Timers
from zapflow.scheduler.wakeups import CAMPAIGN, CAMPAIGN_LATE, CampaignWakeups
from zapflow.tenants.model import BotTenant, DataSpec
from zapflow.v1 import turn_pb2
from zapflow.v1.timer_pb2 import Timer


@dataclass(frozen=True)
class SchedulerParts:
    scheduler: Scheduler
    eraser: Eraser
    campaigns: CampaignRunner
    wakeups: CampaignWakeups


def data_spec_lookup(tenant_named: Callable[[str], BotTenant | None]) -> Callable[[str], DataSpec]:
    """Each tenant's data settings; a tenant deleted from the registry keeps the defaults."""

    def data_of(tenant: str) -> DataSpec:
        found = tenant_named(tenant)
        return found.spec.data if found is not None else DataSpec()

    return data_of


def _jobs(
    core: CoreSettings,
    connections: Connections,
    tenant_named: Callable[[str], BotTenant | None],
    wake_campaigns: Callable[[datetime], Awaitable[int]] | None = None,
) -> Jobs:
    secret = core.pseudonym_secret.get_secret_value()
    return Jobs(connections.database, core.analytics_path, secret, data_spec_lookup(tenant_named), wake_campaigns)


async def run_jobs_once(core: CoreSettings) -> dict[str, bool]:
    """One tick of every job, for a cron job or an operator (`zapflow scheduler --once`)."""
    async with connected("scheduler-once", core, Needs(redis=False, database=True), short_lived=True) as connections:
        tenants = {tenant.name: tenant for tenant in await connections.registry.load_all()}
        return await _jobs(core, connections, tenants.get).run_all()


@asynccontextmanager
async def build(settings: SchedulerSettings, connections: Connections) -> AsyncIterator[SchedulerParts]:
    core = settings.core
    campaigns = CampaignRunner(connections.database, connections.js, connections.redis, connections.registry)
    timers = Timers(connections.js, connections.redis)
    wakeups = CampaignWakeups(campaigns, timers)
    jobs = _jobs(core, connections, connections.registry.by_name, wakeups.wake_due)
    scheduler = Scheduler(jobs, connections.redis, settings.interval_seconds)
    eraser = Eraser.over(connections, core, connections.registry)
    await CampaignResults(campaigns.store).start(connections)
    reengagement = Reengagement(
        connections.js, connections.redis, connections.database, connections.registry.by_name, timers
    )
    timers.on(REENGAGE, reengagement.on_due, REENGAGE_LATE)
    timers.on(CAMPAIGN, wakeups.on_due, CAMPAIGN_LATE)
    await connections.consume(catalogue.REENGAGE_TURNS, turn_pb2.Turn, reengagement.on_turn)
    await connections.consume(catalogue.TIMERS, Timer, timers.handle)
    scheduler.start()
    try:
        yield SchedulerParts(scheduler, eraser, campaigns, wakeups)
    finally:
        await scheduler.stop()


CurrentRuntime = Annotated[
    Runtime[SchedulerSettings, SchedulerParts], Depends(runtime_dependency(SchedulerSettings, SchedulerParts))
]


async def current_eraser(runtime: CurrentRuntime) -> Eraser:
    return runtime.parts.eraser


async def current_campaigns(runtime: CurrentRuntime) -> CampaignRunner:
    return runtime.parts.campaigns


async def current_wakeups(runtime: CurrentRuntime) -> CampaignWakeups:
    return runtime.parts.wakeups


def _routers(settings: SchedulerSettings) -> tuple[APIRouter, ...]:
    return (
        erasures_router(settings.core.admin_token, current_eraser),
        campaigns_router(settings.core.admin_token, current_campaigns, current_wakeups),
    )


SCHEDULER = Service[SchedulerSettings, SchedulerParts](
    name="scheduler",
    summary="Durable jobs (session close, archival, retention), campaigns, and the admin API (erasures, campaigns).",
    # Every stream: an erasure reaches each of them.
    needs=Needs(streams=catalogue.ALL_STREAMS, database=True),
    build=build,
    routers=_routers,
)
