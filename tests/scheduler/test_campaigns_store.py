"""Campaigns in the relational store, on PostgreSQL and SQLite: claims, forward-only progress, preferences,
the recorder's opt-outs, erasure and retention."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.store.conftest import database_url, engine, store  # noqa: F401 (fixtures on both databases)
from tests.store.events import T0, at, inbound, turn
from zapflow.store.campaigns import (
    OPT_OUT_ACTION,
    CampaignError,
    CampaignInfo,
    CampaignStore,
    NewCampaign,
    NewRecipient,
)
from zapflow.store.lifecycle import delete_expired_conversations, erase_contact
from zapflow.store.models import CampaignRecipient, ContactPreference
from zapflow.store.repository import ConversationStore
from zapflow.tenants.model import DataSpec

TENANT = "acme"
CONTACTS = [f"55119876500{i:02d}" for i in range(10)]


@pytest.fixture
def campaigns(engine: AsyncEngine) -> CampaignStore:  # noqa: F811 (the fixture imported above)
    return CampaignStore(engine)


async def a_campaign(
    campaigns: CampaignStore, contacts: list[str] = CONTACTS, tenant: str = TENANT, category: str = "marketing"
) -> CampaignInfo:
    new = NewCampaign(tenant, "Black Friday", "black_friday", "pt_BR", category, T0, "cli")
    return await campaigns.create(new, [NewRecipient(c, {"body.1": f"name {c[-2:]}"}) for c in contacts], T0)


async def states(campaigns: CampaignStore, campaign_id: str) -> dict[str, int]:
    progress = await campaigns.progress(campaign_id, T0)
    assert progress is not None
    return {state: count for state, count in progress.by_status.items() if count}


async def test_recipients_are_claimed_a_slice_at_a_time_in_order_with_their_command_ids(
    campaigns: CampaignStore,
) -> None:
    campaign = await a_campaign(campaigns)
    assert (campaign.status, campaign.next_at) == ("scheduled", T0)

    first = await campaigns.claim(campaign.id, at(1), 4)
    second = await campaigns.claim(campaign.id, at(2), 4)
    rest = await campaigns.claim(campaign.id, at(3), 4)

    assert [r.contact for r in first + second + rest] == CONTACTS
    assert await campaigns.claim(campaign.id, at(4), 4) == []
    assert first[0].parameters == {"body.1": "name 00"}
    assert first[0].command_id(campaign.id) == f"cp:{campaign.id}:{CONTACTS[0]}:0"
    async with campaigns.engine.connect() as conn:
        stored = await conn.scalar(select(CampaignRecipient.command_id).where(CampaignRecipient.contact == CONTACTS[0]))
    assert stored == first[0].command_id(campaign.id)
    assert await states(campaigns, campaign.id) == {"sending": 10}


async def test_replicas_claiming_at_once_never_get_the_same_recipient(campaigns: CampaignStore) -> None:
    campaign = await a_campaign(campaigns)

    claims = await asyncio.gather(*(campaigns.claim(campaign.id, at(1), 3) for _ in range(5)))

    claimed = [recipient.contact for claim in claims for recipient in claim]
    assert claimed and len(claimed) == len(set(claimed))
    # A replica that lost the race finds the rows taken (SQLite) or takes others (PostgreSQL):
    # the queue's rest is still there for the next slice.
    rest = await campaigns.claim(campaign.id, at(2), 10)
    assert sorted(claimed + [recipient.contact for recipient in rest]) == CONTACTS


async def test_delivery_only_moves_forward_and_a_repeated_report_changes_nothing(campaigns: CampaignStore) -> None:
    campaign = await a_campaign(campaigns, CONTACTS[:2])
    await campaigns.claim(campaign.id, at(1), 2)
    one, other = CONTACTS[:2]

    assert await campaigns.settle(campaign.id, one, 0, "sent", at(2), wamid="wamid.1")
    assert not await campaigns.settle(campaign.id, one, 0, "sent", at(2), wamid="wamid.1")
    assert await campaigns.settle(campaign.id, one, 0, "read", at(4))
    assert not await campaigns.settle(campaign.id, one, 0, "delivered", at(3))  # late: read stays
    assert not await campaigns.settle(campaign.id, one, 0, "failed", at(5), reason="failed")
    assert not await campaigns.settle(campaign.id, other, 1, "sent", at(2), wamid="wamid.x")  # another try's
    assert await campaigns.settle(
        campaign.id, other, 0, "failed", at(2), reason="template_rejected", error_code=132001, error_title="no such"
    )

    found = await campaigns.recipient_by_wamid(TENANT, "wamid.1")
    assert found is not None and (found.contact, found.status, found.category) == (one, "read", "marketing")
    assert await campaigns.recipient_by_wamid("globex", "wamid.1") is None  # another tenant's wamid space
    progress = await campaigns.progress(campaign.id, at(6))
    assert progress is not None
    assert {s: c for s, c in progress.by_status.items() if c} == {"read": 1, "failed": 1}
    assert [(o.status, o.reason, o.error_code, o.count) for o in progress.outcomes] == [
        ("failed", "template_rejected", 132001, 1)
    ]


async def test_a_deferred_recipient_waits_then_comes_back_as_a_new_try(campaigns: CampaignStore) -> None:
    campaign = await a_campaign(campaigns, CONTACTS[:1])
    (claimed,) = await campaigns.claim(campaign.id, at(1), 1)
    later = at(1) + timedelta(hours=24)

    assert await campaigns.defer(campaign.id, claimed.contact, 0, later, 131049, at(2))
    assert not await campaigns.defer(campaign.id, claimed.contact, 0, later, 131049, at(2))  # the same result again

    assert await campaigns.claim(campaign.id, at(3), 1) == []
    pending = await campaigns.pending(campaign.id, at(3))
    assert (pending.ready, pending.next_retry_at, pending.sending) == (False, later, 0)
    progress = await campaigns.progress(campaign.id, at(3))
    assert progress is not None and (progress.deferred, progress.next_retry_at) == (1, later)
    (again,) = await campaigns.claim(campaign.id, later, 1)
    assert again.attempt == 1
    assert again.command_id(campaign.id).endswith(":1")


async def test_recipients_left_sending_are_held_again_once_they_are_stale(campaigns: CampaignStore) -> None:
    campaign = await a_campaign(campaigns, CONTACTS[:3])
    await campaigns.claim(campaign.id, at(0), 3)
    await campaigns.settle(campaign.id, CONTACTS[0], 0, "sent", at(1), wamid="wamid.0")

    assert await campaigns.reclaim_stale(campaign.id, at(0), at(30), 10) == []
    stale = await campaigns.reclaim_stale(campaign.id, at(1), at(61), 10)
    assert [r.contact for r in stale] == CONTACTS[1:3]
    assert await campaigns.reclaim_stale(campaign.id, at(1), at(62), 10) == []  # held again at 61


async def test_a_campaign_is_done_once_nothing_is_queued_or_sending(campaigns: CampaignStore) -> None:
    campaign = await a_campaign(campaigns, CONTACTS[:2])
    await campaigns.claim(campaign.id, at(1), 1)
    assert not await campaigns.finish_if_settled(campaign.id, at(2))
    await campaigns.skip(campaign.id, {CONTACTS[0]: "opted_out"}, at(2))
    assert not await campaigns.finish_if_settled(campaign.id, at(2))  # one still queued
    await campaigns.claim(campaign.id, at(3), 1)
    assert await campaigns.due(at(3)) == [campaign.id]  # still running

    assert await campaigns.settle(campaign.id, CONTACTS[1], 0, "sent", at(4), wamid="wamid.1")  # the last one

    assert not await campaigns.finish_if_settled(campaign.id, at(6))  # already done
    done = await campaigns.get(campaign.id)
    assert done is not None and (done.status, done.next_at) == ("done", None)
    assert not await campaigns.set_state(campaign.id, "running", None, at(7), at(7))  # ended stays ended


async def test_cancelling_skips_the_queue_and_an_ended_campaign_cannot_be_cancelled(campaigns: CampaignStore) -> None:
    campaign = await a_campaign(campaigns, CONTACTS[:3])
    await campaigns.claim(campaign.id, at(1), 1)

    cancelled = await campaigns.cancel(campaign.id, at(2))

    assert cancelled is not None and cancelled.status == "cancelled"
    assert await states(campaigns, campaign.id) == {"sending": 1, "skipped": 2}
    assert await campaigns.claim(campaign.id, at(3), 10) == []
    with pytest.raises(CampaignError, match="already ended"):
        await campaigns.cancel(campaign.id, at(3))
    assert await campaigns.cancel("000000000000", at(3)) is None
    assert await campaigns.due(at(10)) == []


async def test_campaigns_are_listed_newest_first_with_counts_and_due_ones_found(campaigns: CampaignStore) -> None:
    older = await a_campaign(campaigns, CONTACTS[:2])
    newer = await a_campaign(campaigns, CONTACTS[:3], tenant="globex")
    await campaigns.set_state(older.id, "running", None, at(100), at(1))

    listed = await campaigns.list_campaigns(None, 10)
    assert {item.campaign.id: item.total for item in listed} == {older.id: 2, newer.id: 3}
    assert [item.campaign.id for item in await campaigns.list_campaigns("globex", 10)] == [newer.id]
    assert await campaigns.due(at(50)) == [newer.id]  # starts at T0; the older one's slice is at 100
    assert await campaigns.due(at(100)) == [newer.id, older.id]


async def test_opting_out_and_in_and_marketing_stopped_until_the_customer_writes(
    campaigns: CampaignStore,
    store: ConversationStore,  # noqa: F811
) -> None:
    customer = CONTACTS[0]
    assert await campaigns.opt_out(TENANT, customer, "admin", at(1))
    assert not await campaigns.opt_out(TENANT, customer, "import", at(2))  # the first opt-out stands
    assert await campaigns.opt_in(TENANT, customer, at(3))
    assert not await campaigns.opt_in(TENANT, customer, at(3))

    await campaigns.stop_marketing(TENANT, customer, at(10))
    # A message written before Meta's refusal, recorded late, does not resume marketing.
    await store.record_inbound(inbound("wamid.early", seconds=5, contact=customer), 1)
    assert (await campaigns.preferences(TENANT, [customer]))[customer].marketing_stopped_at == at(10)
    await store.record_inbound(inbound("wamid.after", seconds=20, contact=customer), 2)

    preference = (await campaigns.preferences(TENANT, [customer]))[customer]
    assert (preference.opted_out_at, preference.marketing_stopped_at) == (None, None)
    assert await campaigns.preferences("globex", [customer]) == {}


async def test_the_recorder_keeps_an_opt_out_from_a_turn_once(
    campaigns: CampaignStore,
    store: ConversationStore,  # noqa: F811
) -> None:
    customer = CONTACTS[1]
    stop = turn("turn-stop", ["wamid.stop"], seconds=30, contact=customer)
    stop.actions.append(OPT_OUT_ACTION)

    await store.record_turn(stop)
    preference = (await campaigns.preferences(TENANT, [customer]))[customer]
    assert (preference.opted_out_at, preference.opt_out_source) == (at(30), "keyword")
    await campaigns.opt_in(TENANT, customer, at(40))
    await store.record_turn(stop)  # redelivered after the admin opted them back in: no new opt-out
    assert (await campaigns.preferences(TENANT, [customer]))[customer].opted_out_at is None
    await store.record_turn(turn("turn-hello", ["wamid.hello"], seconds=50, contact=customer))
    assert (await campaigns.preferences(TENANT, [customer]))[customer].opted_out_at is None


async def test_erasing_a_contact_takes_their_recipient_rows_and_preferences_only(
    campaigns: CampaignStore,
    engine: AsyncEngine,  # noqa: F811
) -> None:
    forgotten, kept = CONTACTS[:2]
    campaign = await a_campaign(campaigns, [forgotten, kept])
    await campaigns.opt_out(TENANT, forgotten, "admin", at(1))
    await campaigns.opt_out(TENANT, kept, "admin", at(1))

    deleted = await erase_contact(engine, TENANT, forgotten)

    assert deleted.rows["campaign_recipients"] == 1
    assert deleted.rows["contact_preferences"] == 1
    assert await states(campaigns, campaign.id) == {"queued": 1}
    assert set(await campaigns.preferences(TENANT, [forgotten, kept])) == {kept}


async def test_retention_takes_campaigns_that_ended_long_ago_with_their_recipients(
    campaigns: CampaignStore,
    engine: AsyncEngine,  # noqa: F811
) -> None:
    ended = await a_campaign(campaigns, CONTACTS[:2])
    running = await a_campaign(campaigns, CONTACTS[2:4])
    await campaigns.cancel(ended.id, at(0))
    await campaigns.opt_out(TENANT, CONTACTS[0], "keyword", at(0))
    data = DataSpec(retention_days=30)

    assert (await delete_expired_conversations(engine, lambda _: data, at(86_400 * 29))).rows["campaigns"] == 0
    deleted = await delete_expired_conversations(engine, lambda _: data, at(86_400 * 31))

    assert (deleted.rows["campaigns"], deleted.rows["campaign_recipients"]) == (1, 2)
    assert await campaigns.get(ended.id) is None
    assert await campaigns.get(running.id) is not None
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(ContactPreference)) == 1  # consent stays
