"""The scheduler's per-tenant figures, from the relational store, on PostgreSQL and SQLite."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import REGISTRY
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.store.events import T0, at, inbound
from tests.support.servers import ManagedServer
from zapflow.platform.redis import connect_redis
from zapflow.scheduler import rollups
from zapflow.store.campaigns import CampaignStore, NewCampaign, NewRecipient
from zapflow.store.lifecycle import close_idle_conversations
from zapflow.store.repository import ConversationStore
from zapflow.tenants.model import DataSpec


async def test_open_conversations_and_contacts_inside_their_window_per_tenant(
    store: ConversationStore, engine: AsyncEngine
) -> None:
    await store.record_inbound(inbound("w1", tenant="shop", contact="5511900000001", seconds=0), 1)
    await store.record_inbound(inbound("w2", tenant="shop", contact="5511900000002", seconds=7200), 2)
    await store.record_inbound(inbound("w3", tenant="clinic", contact="5511900000003", seconds=0), 3)
    # 25 hours after the first messages: only the one sent two hours later is still inside its window.
    now = at(25 * 3600)
    figures = await rollups.compute(engine, now)
    assert figures.contacts_in_window == {"shop": 1}
    assert figures.open_conversations == {"shop": 2, "clinic": 1}

    await close_idle_conversations(engine, lambda _: DataSpec(sessionIdleMinutes=60), now)
    assert (await rollups.compute(engine, now)).open_conversations == {}


async def test_campaign_progress_counts_the_recipients_of_campaigns_still_going(engine: AsyncEngine) -> None:
    campaigns = CampaignStore(engine)

    async def a_campaign(tenant: str, contacts: int) -> str:
        new = NewCampaign(tenant, "december", "promo_dec", "pt_BR", "marketing", T0, "cli")
        recipients = [NewRecipient(f"551198765{i:04d}", {}) for i in range(contacts)]
        return (await campaigns.create(new, recipients, T0)).id

    running = await a_campaign("shop", 5)
    await campaigns.claim(running, at(1), 2)
    await a_campaign("shop", 3)
    cancelled = await a_campaign("clinic", 4)
    await campaigns.cancel(cancelled, at(2))

    figures = await rollups.compute(engine, at(3))

    assert figures.active_campaigns == {"shop": 2}
    assert figures.campaign_recipients == {
        "shop": {"queued": 6, "sending": 2, "sent": 0, "delivered": 0, "read": 0, "failed": 0, "skipped": 0}
    }


def test_the_gauges_hold_the_last_figures_and_are_cleared_off_the_leader() -> None:
    states = {"queued": 6, "sending": 2}
    rollups.export(
        rollups.Rollup(
            open_conversations={"shop": 2},
            contacts_in_window={"shop": 1},
            active_campaigns={"shop": 1},
            campaign_recipients={"shop": states},
        )
    )
    assert REGISTRY.get_sample_value("zapflow_conversations_open", {"tenant": "shop"}) == 2
    assert REGISTRY.get_sample_value("zapflow_campaigns_active", {"tenant": "shop"}) == 1
    assert REGISTRY.get_sample_value("zapflow_campaign_recipients", {"tenant": "shop", "state": "queued"}) == 6
    rollups.export(
        rollups.Rollup(
            open_conversations={"clinic": 1}, contacts_in_window={}, active_campaigns={}, campaign_recipients={}
        )
    )
    assert REGISTRY.get_sample_value("zapflow_conversations_open", {"tenant": "shop"}) is None
    assert REGISTRY.get_sample_value("zapflow_campaign_recipients", {"tenant": "shop", "state": "queued"}) is None
    rollups.clear()
    assert REGISTRY.get_sample_value("zapflow_conversations_open", {"tenant": "clinic"}) is None


async def test_one_replica_computes_each_time_bucket(redis: ManagedServer) -> None:
    client: Redis = connect_redis(f"{redis.url}/0")
    try:
        now = at(0)
        claims = [await rollups.claim_bucket(client, now + timedelta(seconds=s), 60) for s in (0, 1, 59, 61)]
    finally:
        await client.aclose()
    # T0 is on a minute boundary: the first three fall in one bucket, the last in the next.
    assert claims == [True, False, False, True]
