"""Per-tenant figures computed once per interval from the relational store, exported as gauges.

Open conversations and the contacts inside their 24-hour window (who may get free text now) are
counted by the scheduler replica that holds the lease, at most once per time bucket across
replicas (`keys.ROLLUP_BUCKET`), so a lease handed over mid-interval does not count twice. A
replica that loses the lease clears its gauges, so only the current leader exports them and a
dashboard's `max by (tenant)` reads one value. The handoff queue's figures come from the handoff
service itself (`zapflow_handoff_queue_length`, `..._oldest_wait_seconds`); campaign progress from
the campaign runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from zapflow.platform import metrics
from zapflow.platform.keys import rollup_bucket_key
from zapflow.store.models import CONVERSATION_OPEN, Contact, Conversation
from zapflow.whatsapp.window import SERVICE_WINDOW


@dataclass(frozen=True)
class Rollup:
    open_conversations: dict[str, int]
    contacts_in_window: dict[str, int]


async def compute(engine: AsyncEngine, now: datetime) -> Rollup:
    """The figures of every tenant with data, as of `now`."""
    async with engine.connect() as conn:
        open_rows = await conn.execute(
            select(Conversation.tenant, func.count())
            .where(Conversation.status == CONVERSATION_OPEN)
            .group_by(Conversation.tenant)
        )
        window_rows = await conn.execute(
            select(Contact.tenant, func.count())
            .where(Contact.last_customer_message_at > now - SERVICE_WINDOW)
            .group_by(Contact.tenant)
        )
        return Rollup(
            open_conversations={str(tenant): int(count) for tenant, count in open_rows},
            contacts_in_window={str(tenant): int(count) for tenant, count in window_rows},
        )


def export(rollup: Rollup) -> None:
    """Replace the gauges with these figures (a tenant without data any more drops out)."""
    clear()
    for tenant, count in rollup.open_conversations.items():
        metrics.OPEN_CONVERSATIONS.labels(tenant).set(count)
    for tenant, count in rollup.contacts_in_window.items():
        metrics.CONTACTS_IN_WINDOW.labels(tenant).set(count)


def clear() -> None:
    metrics.OPEN_CONVERSATIONS.clear()
    metrics.CONTACTS_IN_WINDOW.clear()


async def claim_bucket(redis: Redis, now: datetime, interval_s: float) -> bool:
    """Whether this replica computes the bucket `now` falls in (the first to ask does)."""
    bucket = int(now.timestamp() // interval_s)
    return bool(await redis.set(rollup_bucket_key(bucket), "1", nx=True, ex=max(1, int(interval_s * 2))))
