"""The scheduler's jobs, run one after the other at every tick.

1. close_idle: conversations idle longer than their tenant's `sessionIdleMinutes` are closed;
2. archive: closed conversations, resolved handoffs and campaigns' figures are copied into the
   analytics file;
3. retention: archived conversations older than `retentionDays` leave the relational store,
   and archived figures older than `analyticsRetentionDays` leave the analytics file;
4. campaigns: active campaigns whose next slice is overdue are woken (wakeups.py, a safety net);
5. rollups: the per-tenant gauges (rollups.py), once per time bucket across replicas.

Every job is idempotent, so a tick killed half-way is finished by the next one. A job that
fails is counted and logged and does not stop the ones after it, except that retention never
runs before archival has succeeded in the same tick (it only deletes archived rows anyway).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from zapflow.analytics.archive import Archiver
from zapflow.analytics.warehouse import delete_figures_before, open_warehouse
from zapflow.platform import metrics
from zapflow.platform.logging import get_logger
from zapflow.scheduler import rollups
from zapflow.store.lifecycle import DataSpecOf, close_idle_conversations, delete_expired_conversations

log = get_logger(__name__)


class Jobs:
    def __init__(
        self,
        engine: AsyncEngine,
        warehouse: Path,
        pseudonym_secret: str,
        data_of: DataSpecOf,
        wake_campaigns: Callable[[datetime], Awaitable[int]] | None = None,
    ) -> None:
        self._engine = engine
        self._wake_campaigns = wake_campaigns
        self._warehouse = warehouse
        self._data_of = data_of
        self._archiver = Archiver(engine, warehouse, pseudonym_secret, data_of)

    async def run_all(
        self, now: datetime | None = None, rollup_claim: Callable[[datetime], Awaitable[bool]] | None = None
    ) -> dict[str, bool]:
        """One tick: every job once, in order; which jobs succeeded.

        The per-tenant figures are computed when `rollup_claim` grants this replica the time bucket.
        """
        at = now or datetime.now(UTC)
        succeeded = {
            "close_idle": await _timed("close_idle", lambda: self.close_idle(at)),
            "archive": await _timed("archive", lambda: self.archive(at)),
        }
        if succeeded["archive"]:
            succeeded["retention"] = await _timed("retention", lambda: self.retention(at))
        if self._wake_campaigns is not None:
            wake = self._wake_campaigns
            succeeded["campaigns"] = await _timed("campaigns", lambda: wake(at))
        if rollup_claim is not None and await rollup_claim(at):
            succeeded["rollups"] = await _timed("rollups", lambda: self.rollups(at))
        return succeeded

    async def rollups(self, now: datetime) -> int:
        figures = await rollups.compute(self._engine, now)
        rollups.export(figures)
        return len(figures.open_conversations)

    async def close_idle(self, now: datetime) -> int:
        closed = await close_idle_conversations(self._engine, self._data_of, now)
        metrics.SESSIONS_CLOSED.inc(closed)
        return closed

    async def archive(self, now: datetime) -> int:
        archived = await self._archiver.archive_closed(now)
        metrics.SESSIONS_ARCHIVED.inc(archived)
        return archived

    async def retention(self, now: datetime) -> dict[str, int]:
        sql = await delete_expired_conversations(self._engine, self._data_of, now)
        metrics.RETENTION_DELETED_ROWS.labels("sql").inc(sql.total)
        analytics = await asyncio.to_thread(self._expire_analytics, now)
        metrics.RETENTION_DELETED_ROWS.labels("analytics").inc(analytics)
        return {"sql": sql.total, "analytics": analytics}

    def _expire_analytics(self, now: datetime) -> int:
        if not self._warehouse.exists():
            return 0
        deleted = 0
        with open_warehouse(self._warehouse) as warehouse:
            known = warehouse.execute(
                "SELECT tenant FROM sessions UNION SELECT tenant FROM handoffs UNION SELECT tenant FROM campaigns"
            ).fetchall()
            tenants = [row[0] for row in known]
            for tenant in tenants:
                cutoff = now - timedelta(days=self._data_of(tenant).analytics_retention_days)
                deleted += delete_figures_before(warehouse, tenant, cutoff.replace(tzinfo=None))
        return deleted


async def _timed(job: str, run: Callable[[], Awaitable[object]]) -> bool:
    started = time.perf_counter()
    try:
        outcome = await run()
    except Exception:  # the next tick retries; the others still run
        metrics.JOB_FAILURES.labels(job).inc()
        log.exception("scheduler job failed", job=job)
        return False
    finally:
        metrics.JOB_SECONDS.labels(job).observe(time.perf_counter() - started)
    metrics.JOB_LAST_SUCCESS.labels(job).set_to_current_time()
    log.info("scheduler job done", job=job, outcome=outcome)
    return True
