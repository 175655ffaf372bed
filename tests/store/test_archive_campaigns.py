"""Campaigns' figures in the analytics file, on PostgreSQL and SQLite: counted in SQL, copied again
while receipts can still change them, all or nothing, and expired with the tenant's other figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.store.events import T0, at
from zapflow.analytics import archive
from zapflow.analytics.archive import CAMPAIGN_SETTLE, Archiver
from zapflow.analytics.warehouse import open_warehouse
from zapflow.scheduler.jobs import Jobs
from zapflow.store.campaigns import CampaignStore, NewCampaign, NewRecipient
from zapflow.store.models import RECIPIENT_STATES
from zapflow.tenants.model import DataSpec

SECRET = "test-pseudonym-secret"
CONTACTS = [f"55119876500{i:02d}" for i in range(6)]
# A template parameter: a customer's name, which must not reach the file.
PARAMETER = "Ana Bezerra"


@pytest.fixture
def campaigns(engine: AsyncEngine) -> CampaignStore:
    return CampaignStore(engine)


async def a_campaign(
    campaigns: CampaignStore,
    contacts: list[str],
    *,
    tenant: str = "acme",
    name: str = "December",
    template: str = "promo_dec",
    category: str = "marketing",
    created: float = 0,
) -> str:
    """A campaign created `created` seconds after T0, every recipient queued; its id."""
    new = NewCampaign(tenant, name, template, "pt_BR", category, at(created), "cli")
    recipients = [NewRecipient(contact, {"body.1": PARAMETER}) for contact in contacts]
    return (await campaigns.create(new, recipients, at(created))).id


def naive(moment: datetime) -> datetime:
    return moment.replace(tzinfo=None)


def rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    with open_warehouse(path, read_only=True) as warehouse:
        return {
            "campaigns": warehouse.execute("SELECT * FROM campaigns ORDER BY tenant, created_at").fetchall(),
            "campaign_outcomes": warehouse.execute(
                "SELECT * FROM campaign_outcomes ORDER BY tenant, campaign_id, status"
            ).fetchall(),
        }


def counts(
    queued: int = 0,
    sending: int = 0,
    sent: int = 0,
    delivered: int = 0,
    read: int = 0,
    failed: int = 0,
    skipped: int = 0,
) -> tuple[int, ...]:
    """A campaign row's recipients, then its count in each state."""
    by_state = (queued, sending, sent, delivered, read, failed, skipped)
    return (sum(by_state), *by_state)


async def under_way(campaigns: CampaignStore) -> tuple[str, str, str]:
    """acme's campaign with a recipient in each state but queued, acme's not started, globex's refused."""
    acme = await a_campaign(campaigns, CONTACTS)
    later = await a_campaign(campaigns, CONTACTS[:3], name="Later", template="promo_later", created=10)
    globex = await a_campaign(campaigns, CONTACTS[:2], tenant="globex", name="Orders", template="order_update")
    await campaigns.claim(acme, at(60), 6)
    one, two, three, four, five, _still_sending = CONTACTS
    await campaigns.settle(acme, one, 0, "sent", at(61), wamid="wamid.1")
    await campaigns.settle(acme, two, 0, "delivered", at(62), wamid="wamid.2")
    await campaigns.settle(acme, three, 0, "read", at(63), wamid="wamid.3")
    await campaigns.settle(
        acme, four, 0, "failed", at(64), reason="marketing_stopped", error_code=131050, error_title="stopped"
    )
    await campaigns.skip(acme, {five: "opted_out"}, at(65))
    await campaigns.claim(globex, at(60), 2)
    await campaigns.fail(globex, "Meta refused the template (error 132001)", at(61))
    for contact in CONTACTS[:2]:
        await campaigns.settle(
            globex, contact, 0, "failed", at(61), reason="template_rejected", error_code=132001, error_title="no such"
        )
    return acme, later, globex


def campaign_row(
    tenant: str,
    campaign_id: str,
    name: str,
    template: str,
    status: str,
    figures: tuple[int, ...],
    archived: float,
    *,
    reason: str | None = None,
    created: float = 0,
    updated: float | None = None,
) -> tuple[object, ...]:
    created_at = naive(at(created))
    updated_at = naive(at(updated)) if updated is not None else created_at
    return (tenant, campaign_id, name, template, "pt_BR", "marketing", status, reason, created_at, created_at,
            updated_at, *figures, naive(at(archived)))  # fmt: skip


async def test_campaigns_are_copied_as_figures_counted_by_state_and_by_reason(
    campaigns: CampaignStore, engine: AsyncEngine, tmp_path: Path
) -> None:
    acme, later, globex = await under_way(campaigns)
    warehouse = tmp_path / "analytics.duckdb"

    assert await Archiver(engine, warehouse, SECRET).archive_campaigns(at(3600)) == 3

    refused = "Meta refused the template (error 132001)"
    assert rows(warehouse) == {
        "campaigns": [
            campaign_row("acme", acme, "December", "promo_dec", "scheduled",
                         counts(sending=1, sent=1, delivered=1, read=1, failed=1, skipped=1), 3600),
            campaign_row("acme", later, "Later", "promo_later", "scheduled", counts(queued=3), 3600, created=10),
            campaign_row("globex", globex, "Orders", "order_update", "failed", counts(failed=2), 3600,
                         reason=refused, updated=61),
        ],
        "campaign_outcomes": [
            ("acme", acme, "failed", "marketing_stopped", 131050, 1),
            ("acme", acme, "skipped", "opted_out", None, 1),
            ("globex", globex, "failed", "template_rejected", 132001, 2),
        ],
    }  # fmt: skip
    contents = warehouse.read_bytes()
    for personal in (*(contact.encode() for contact in CONTACTS), PARAMETER.encode(), b"wamid."):
        assert personal not in contents


async def test_each_run_copies_the_figures_again_and_an_unchanged_campaign_gives_the_same_row(
    campaigns: CampaignStore, engine: AsyncEngine, tmp_path: Path
) -> None:
    acme, _, _ = await under_way(campaigns)
    warehouse = tmp_path / "analytics.duckdb"
    archiver = Archiver(engine, warehouse, SECRET)
    await archiver.archive_campaigns(at(3600))
    first = rows(warehouse)

    assert await archiver.archive_campaigns(at(3600)) == 3
    assert rows(warehouse) == first

    # Receipts after the first copy: the one sending is sent, the one sent is delivered.
    await campaigns.settle(acme, CONTACTS[5], 0, "sent", at(4000), wamid="wamid.6")
    await campaigns.settle(acme, CONTACTS[0], 0, "delivered", at(4001))
    await archiver.archive_campaigns(at(7200))

    again = rows(warehouse)
    assert again["campaigns"][0][11:] == (
        *counts(sent=1, delivered=2, read=1, failed=1, skipped=1),
        naive(at(7200)),
    )
    # The others are the same rows, copied at the later time.
    assert [row[:-1] for row in again["campaigns"][1:]] == [row[:-1] for row in first["campaigns"][1:]]
    assert again["campaign_outcomes"] == first["campaign_outcomes"]


async def test_an_ended_campaign_is_copied_again_until_it_settles_an_active_one_whatever_its_age(
    campaigns: CampaignStore, engine: AsyncEngine, tmp_path: Path
) -> None:
    ended = await a_campaign(campaigns, CONTACTS[:1], name="Ended", template="promo_ended")
    await campaigns.claim(ended, at(1), 1)
    await campaigns.settle(ended, CONTACTS[0], 0, "sent", at(2), wamid="wamid.1")  # the last one: done
    going = await a_campaign(campaigns, CONTACTS[:2], name="Going", template="promo_going", created=1)
    await campaigns.claim(going, at(1), 1)
    warehouse = tmp_path / "analytics.duckdb"
    archiver = Archiver(engine, warehouse, SECRET)
    assert await archiver.archive_campaigns(at(60)) == 2

    settled = CAMPAIGN_SETTLE.total_seconds()
    await campaigns.settle(ended, CONTACTS[0], 0, "delivered", at(settled - 60))  # a late receipt, still counted
    assert await archiver.archive_campaigns(at(settled - 1)) == 2
    await campaigns.settle(ended, CONTACTS[0], 0, "read", at(settled + 10))  # too late to count
    await campaigns.claim(going, at(settled + 10), 1)
    recent = await a_campaign(campaigns, CONTACTS[:1], name="Recent", template="promo_recent", created=settled)

    assert await archiver.archive_campaigns(at(settled + 60)) == 2

    assert rows(warehouse)["campaigns"] == [
        campaign_row("acme", ended, "Ended", "promo_ended", "done", counts(delivered=1), settled - 1, updated=2),
        campaign_row("acme", going, "Going", "promo_going", "scheduled", counts(sending=2), settled + 60, created=1),
        campaign_row("acme", recent, "Recent", "promo_recent", "scheduled", counts(queued=1), settled + 60,
                     created=settled),
    ]  # fmt: skip


async def test_a_copy_that_fails_half_way_leaves_the_last_one_whole(
    campaigns: CampaignStore, engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    acme, _, _ = await under_way(campaigns)
    warehouse = tmp_path / "analytics.duckdb"
    archiver = Archiver(engine, warehouse, SECRET)
    await archiver.archive_campaigns(at(3600))
    first = rows(warehouse)
    await campaigns.settle(acme, CONTACTS[0], 0, "read", at(4000))
    insert_columns = archive._insert_columns

    def fail_at_the_outcomes(
        warehouse: duckdb.DuckDBPyConnection, table: str, columns: Mapping[str, Sequence[Any]]
    ) -> None:
        if table == "campaign_outcomes":  # the campaigns deleted and inserted again, not yet committed
            raise OSError("disk full")
        insert_columns(warehouse, table, columns)

    monkeypatch.setattr(archive, "_insert_columns", fail_at_the_outcomes)
    with pytest.raises(OSError, match="disk full"):
        await archiver.archive_campaigns(at(7200))

    assert rows(warehouse) == first
    monkeypatch.undo()
    await archiver.archive_campaigns(at(7200))
    assert rows(warehouse)["campaigns"][0][11:] == (
        *counts(sending=1, delivered=1, read=2, failed=1, skipped=1),
        naive(at(7200)),
    )


async def test_retention_expires_a_tenants_campaigns_and_archival_does_not_bring_them_back(
    campaigns: CampaignStore, engine: AsyncEngine, tmp_path: Path
) -> None:
    # Only campaigns in the file: the retention job still finds their tenants.
    acme = await a_campaign(campaigns, CONTACTS[:2])
    globex = await a_campaign(campaigns, CONTACTS[:2], tenant="globex")
    for campaign_id in (acme, globex):
        await campaigns.claim(campaign_id, at(1), 1)
        await campaigns.skip(campaign_id, {CONTACTS[0]: "opted_out"}, at(2))  # the other stays queued: active
    terms = {"acme": DataSpec(analytics_retention_days=10), "globex": DataSpec(analytics_retention_days=20)}
    warehouse = tmp_path / "analytics.duckdb"
    jobs = Jobs(engine, warehouse, SECRET, terms.__getitem__)

    await jobs.run_all(T0 + timedelta(days=1))
    assert [row[:2] for row in rows(warehouse)["campaigns"]] == [("acme", acme), ("globex", globex)]
    assert [row[:2] for row in rows(warehouse)["campaign_outcomes"]] == [("acme", acme), ("globex", globex)]

    assert await jobs.run_all(T0 + timedelta(days=11)) == {"close_idle": True, "archive": True, "retention": True}
    expected = {"campaigns": [("globex", globex)], "campaign_outcomes": [("globex", globex)]}
    assert {table: [row[:2] for row in found] for table, found in rows(warehouse).items()} == expected
    # Still active and within the settling time, but past acme's retention: not copied back.
    await jobs.archive(T0 + timedelta(days=12))
    assert {table: [row[:2] for row in found] for table, found in rows(warehouse).items()} == expected


def test_the_campaigns_table_counts_every_recipient_state_of_the_store(tmp_path: Path) -> None:
    with open_warehouse(tmp_path / "analytics.duckdb") as warehouse:
        columns = [row[0] for row in warehouse.execute("DESCRIBE campaigns").fetchall()]
    assert columns[columns.index("recipients") + 1 : columns.index("archived_at")] == list(RECIPIENT_STATES)
