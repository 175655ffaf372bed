"""Per-tenant figures computed once per interval from the relational store, exported as gauges.

Open conversations and the contacts inside their 24-hour window (who may get free text now) are
counted by the scheduler replica that holds the lease, at most once per time bucket across
replicas (`keys.ROLLUP_BUCKET`), so a lease handed over mid-interval does not count twice. A
replica that loses the lease clears its gauges, so only the current leader exports them and a
dashboard's `max by (tenant)` reads one value. Campaign progress is the recipients of the
campaigns still going, by state: a finished campaign drops out (its figures stay in
`zapflow campaign show` and the analytics file; `zapflow_scheduler_campaign_messages_total` counts
every outcome as it happens). The handoff queue's figures come from the handoff service itself
(`zapflow_handoff_queue_length`, `..._oldest_wait_seconds`), which knows them as they change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from zapflow.platform import metrics
from zapflow.platform.keys import rollup_bucket_key
from zapflow.store.models import (
    CAMPAIGN_ACTIVE,
    CONVERSATION_OPEN,
    RECIPIENT_STATES,
    Campaign,
    CampaignRecipient,
    Contact,
    Conversation,
)
from zapflow.whatsapp.window import SERVICE_WINDOW


@dataclass(frozen=True)
class Rollup:
    open_conversations: dict[str, int]
    contacts_in_window: dict[str, int]
    active_campaigns: dict[str, int]
    # tenant -> recipient state -> count, every state present for a tenant with an active campaign.
    campaign_recipients: dict[str, dict[str, int]]


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
        campaign_rows = await conn.execute(
            select(Campaign.tenant, func.count()).where(Campaign.status.in_(CAMPAIGN_ACTIVE)).group_by(Campaign.tenant)
        )
        active_campaigns = {str(tenant): int(count) for tenant, count in campaign_rows}
        recipient_rows = await conn.execute(
            select(CampaignRecipient.tenant, CampaignRecipient.status, func.count())
            .join(Campaign, Campaign.id == CampaignRecipient.campaign_id)
            .where(Campaign.status.in_(CAMPAIGN_ACTIVE))
            .group_by(CampaignRecipient.tenant, CampaignRecipient.status)
        )
        campaign_recipients = {tenant: dict.fromkeys(RECIPIENT_STATES, 0) for tenant in active_campaigns}
        for tenant, state, count in recipient_rows:
            campaign_recipients[str(tenant)][str(state)] = int(count)
        return Rollup(
            open_conversations={str(tenant): int(count) for tenant, count in open_rows},
            contacts_in_window={str(tenant): int(count) for tenant, count in window_rows},
            active_campaigns=active_campaigns,
            campaign_recipients=campaign_recipients,
        )


def export(rollup: Rollup) -> None:
    """Replace the gauges with these figures (a tenant without data any more drops out)."""
    clear()
    for tenant, count in rollup.open_conversations.items():
        metrics.OPEN_CONVERSATIONS.labels(tenant).set(count)
    for tenant, count in rollup.contacts_in_window.items():
        metrics.CONTACTS_IN_WINDOW.labels(tenant).set(count)
    for tenant, count in rollup.active_campaigns.items():
        metrics.CAMPAIGNS_ACTIVE.labels(tenant).set(count)
    for tenant, states in rollup.campaign_recipients.items():
        for state, count in states.items():
            metrics.CAMPAIGN_RECIPIENTS.labels(tenant, state).set(count)


def clear() -> None:
    for gauge in (
        metrics.OPEN_CONVERSATIONS,
        metrics.CONTACTS_IN_WINDOW,
        metrics.CAMPAIGNS_ACTIVE,
        metrics.CAMPAIGN_RECIPIENTS,
    ):
        gauge.clear()


async def claim_bucket(redis: Redis, now: datetime, interval_s: float) -> bool:
    """Whether this replica computes the bucket `now` falls in (the first to ask does)."""
    bucket = int(now.timestamp() // interval_s)
    return bool(await redis.set(rollup_bucket_key(bucket), "1", nx=True, ex=max(1, int(interval_s * 2))))
