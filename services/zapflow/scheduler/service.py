"""`zapflow scheduler`: runs the jobs on a timer, and serves the admin API's erasures.

The erasures live here because this process already owns the analytics file: DuckDB lets one
process write a file at a time, and the jobs and erasures take turns on it inside one process
instead of waiting on each other's file lock.

Several replicas may run: a lease in Redis lets one of them run the jobs at a time (the others
stand by and take over when it stops renewing); every replica serves the admin API.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import uvicorn
from fastapi import FastAPI
from redis.asyncio import Redis

from zapflow.platform import bus, catalogue
from zapflow.platform.http import FASTAPI_TELEMETRY_OFF, ops_router
from zapflow.platform.keys import SCHEDULER_LEADER
from zapflow.platform.logging import configure_logging, get_logger
from zapflow.platform.runtime import ServiceRuntime
from zapflow.platform.settings import CoreSettings
from zapflow.platform.telemetry import configure_tracing
from zapflow.privacy.api import erasures_router
from zapflow.privacy.erasure import Eraser
from zapflow.scheduler.jobs import Jobs
from zapflow.scheduler.settings import SchedulerSettings
from zapflow.store.engine import create_engine
from zapflow.store.migrate import require_migrated
from zapflow.tenants.model import BotTenant, DataSpec
from zapflow.tenants.registry import TenantRegistry, open_bucket

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
                if await self._hold_lease():
                    # Renewed while the jobs run: a long archival must not let another replica in.
                    keeper = asyncio.create_task(self._keep_lease())
                    try:
                        await self._jobs.run_all(datetime.now(UTC))
                    finally:
                        keeper.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await keeper
            except Exception:  # Redis unreachable: try again at the next tick
                log.exception("scheduler tick failed")
            # The interval is the schedule itself, not a wait for something to happen.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval_s)

    async def _hold_lease(self) -> bool:
        """Take or renew the lease for three intervals; whether this replica holds it."""
        return bool(await self._lease(keys=[SCHEDULER_LEADER], args=[self._identity, int(self._interval_s * 3000)]))

    async def _keep_lease(self) -> None:
        while True:
            # Pacing: renew well before the lease's three intervals run out.
            await asyncio.sleep(self._interval_s)
            await self._hold_lease()


def data_spec_lookup(tenant_named: Callable[[str], BotTenant | None]) -> Callable[[str], DataSpec]:
    """Each tenant's data settings; a tenant deleted from the registry keeps the defaults."""

    def data_of(tenant: str) -> DataSpec:
        found = tenant_named(tenant)
        return found.spec.data if found is not None else DataSpec()

    return data_of


async def run_jobs_once(core: CoreSettings) -> dict[str, bool]:
    """One tick of every job, for a cron job or an operator (`zapflow scheduler --once`)."""
    await require_migrated(core.database_url)
    nc = await bus.connect_once(core.nats_url, "zapflow-scheduler-once")
    database = create_engine(core.database_url)
    try:
        registry = TenantRegistry(await open_bucket(nc.jetstream(), core.tenant_bucket, core.stream_replicas))
        tenants = {tenant.name: tenant for tenant in await registry.load_all()}
        secret = core.pseudonym_secret.get_secret_value()
        jobs = Jobs(database, core.analytics_path, secret, data_spec_lookup(tenants.get))
        return await jobs.run_all()
    finally:
        await database.dispose()
        await nc.close()


def create_app(settings: SchedulerSettings) -> FastAPI:
    runtime_holder: dict[str, ServiceRuntime] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        core = settings.core
        await require_migrated(core.database_url)
        database = create_engine(core.database_url)
        runtime = await ServiceRuntime.start("scheduler", core, catalogue.ALL_STREAMS)
        secret = core.pseudonym_secret.get_secret_value()
        jobs = Jobs(database, core.analytics_path, secret, data_spec_lookup(runtime.registry.by_name))
        scheduler = Scheduler(jobs, runtime.redis, settings.interval_seconds)
        runtime_holder["runtime"] = runtime
        app.state.eraser = Eraser(database, runtime.redis, runtime.js, core.analytics_path, secret)
        scheduler.start()
        try:
            yield
        finally:
            await scheduler.stop()
            await runtime.stop()
            await database.dispose()

    app = FastAPI(
        title="zapflow scheduler", lifespan=lifespan, docs_url=None, redoc_url=None, telemetry=FASTAPI_TELEMETRY_OFF
    )
    app.include_router(ops_router(lambda: runtime_holder.get("runtime"), settings.core.metrics_token))
    app.include_router(erasures_router(settings.core.admin_token))
    return app


def run(settings: SchedulerSettings) -> None:
    """Serve the scheduler; raises StoreError first when the database is not migrated."""
    asyncio.run(require_migrated(settings.core.database_url))
    configure_logging("scheduler", settings.core.log_level, settings.core.log_json)
    configure_tracing("scheduler", settings.core.otlp_endpoint)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False)
