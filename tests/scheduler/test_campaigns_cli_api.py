"""`zapflow campaign`, `zapflow contact opt-out|opt-in` and the admin API's campaigns, on real servers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.support.cli import cli_environment, run_zapflow
from tests.support.http import serve
from tests.support.tenants import make_tenant
from zapflow.platform.service import create_app
from zapflow.platform.settings import CoreSettings
from zapflow.scheduler.app import SCHEDULER
from zapflow.scheduler.settings import SchedulerSettings
from zapflow.store.campaigns import CampaignStore
from zapflow.store.engine import create_engine
from zapflow.tenants.model import BotTenant
from zapflow.tenants.registry import TenantRegistry

# A dozen `zapflow` processes per test, each paying Python's start-up: on a loaded machine
# (two test workers on two cores) that alone nears the default 120 s.
pytestmark = pytest.mark.timeout(300)

ADMIN = {"Authorization": "Bearer changethis"}
CREATED = re.compile(r"campaign ([0-9a-f]{12}) created")


@pytest.fixture
async def tenant(registry: TenantRegistry) -> BotTenant:
    tenant = make_tenant()
    await registry.put(tenant)
    return tenant


@pytest.fixture
async def admin(core: CoreSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The scheduler's admin API (its jobs tick once an hour: nothing here runs through them)."""
    app = create_app(SCHEDULER, SchedulerSettings(core=core, interval_seconds=3600))
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield client


async def test_the_cli_creates_lists_shows_and_cancels_and_opts_customers_out_and_in(
    core: CoreSettings, tenant: BotTenant, tmp_path: Path
) -> None:
    env = cli_environment(
        ZAPFLOW_NATS_URL=core.nats_url, ZAPFLOW_REDIS_URL=core.redis_url, ZAPFLOW_DATABASE_URL=core.database_url
    )

    def zapflow(*args: str) -> tuple[int, str, str]:
        done = run_zapflow(env, *args, cwd=tmp_path)
        assert "Traceback" not in done.stderr, done.stderr
        return done.returncode, done.stdout, done.stderr

    bad = tmp_path / "bad.csv"
    bad.write_text("phone,body.1\n+55 11 98765-0001,Ana\n12,Bia\n+5511987650001,Ana again\n")
    good = tmp_path / "contacts.csv"
    good.write_text("phone;body.1\n+55 11 98765-0001;Ana\n5511987650002;Bia\n5511987650003;Caio\n")
    create = ("campaign", "create", "--tenant", tenant.name, "--template", "black_friday", "--language", "pt_BR")

    code, _, stderr = zapflow(*create, "--contacts", str(bad))
    assert code == 1
    assert "nothing was created; 2 problem(s)" in stderr
    assert "bad.csv: line 3: not a phone number" in stderr
    assert "bad.csv: line 4: +5511987650001 is already on line 2" in stderr
    code, _, stderr = zapflow(*create[:3], "t-nobody", *create[4:], "--contacts", str(good))
    assert code == 1 and "no tenant named t-nobody" in stderr

    code, stdout, stderr = zapflow(*create, "--contacts", str(good), "--name", "December")
    assert code == 0, stderr
    assert f"created for tenant {tenant.name}: 3 recipients, template black_friday (pt_BR, marketing)" in stdout
    found = CREATED.search(stdout)
    assert found is not None
    campaign_id = found.group(1)

    code, stdout, _ = zapflow("campaign", "list", "--tenant", tenant.name)
    assert code == 0 and campaign_id in stdout and "December" in stdout and "0/3" in stdout
    code, stdout, _ = zapflow("campaign", "show", campaign_id)
    assert code == 0 and "recipients by state" in stdout and "scheduled" in stdout

    code, stdout, _ = zapflow("contact", "opt-out", "--tenant", tenant.name, "+55 11 98765-0002")
    assert code == 0 and "is opted out" in stdout
    code, stdout, _ = zapflow("contact", "opt-in", "--tenant", tenant.name, "5511987650003")
    assert code == 0 and "nothing changed" in stdout

    code, stdout, _ = zapflow("campaign", "cancel", campaign_id)
    assert code == 0 and "cancelled" in stdout
    code, _, stderr = zapflow("campaign", "cancel", campaign_id)
    assert code == 1 and "already ended (cancelled)" in stderr
    code, _, stderr = zapflow("campaign", "show", "000000000000")
    assert code == 1 and "no campaign 000000000000" in stderr

    engine = create_engine(core.database_url)
    try:
        preferences = await CampaignStore(engine).preferences(tenant.name, ["5511987650002", "5511987650003"])
    finally:
        await engine.dispose()
    assert list(preferences) == ["5511987650002"]
    assert preferences["5511987650002"].opt_out_source == "admin"


async def test_the_admin_api_creates_from_json_or_csv_and_refuses_bad_lists_with_reasons(
    admin: httpx.AsyncClient, tenant: BotTenant
) -> None:
    body = {
        "tenant": tenant.name,
        "template": {"name": "promo", "language": "pt_BR"},
        "recipients": [
            {"phone": "+5511987650001", "parameters": {"body.1": "Ana"}},
            {"phone": "5511987650002", "parameters": {"body.1": "Bia"}},
        ],
    }
    assert (await admin.get("/admin/v1/campaigns")).status_code == 401
    assert (await admin.post("/admin/v1/campaigns", json=body)).status_code == 401

    created = await admin.post("/admin/v1/campaigns", json=body, headers=ADMIN)
    assert created.status_code == 201, created.text
    campaign = created.json()
    assert (campaign["status"], campaign["recipients"], campaign["created_by"]) == ("scheduled", 2, "admin-api")
    assert campaign["template"] == {"name": "promo", "language": "pt_BR", "category": "marketing"}
    assert campaign["progress"] == {
        "queued": 2, "sending": 0, "sent": 0, "delivered": 0, "read": 0, "failed": 0, "skipped": 0
    }  # fmt: skip

    twice = {
        **body,
        "recipients": [body["recipients"][0], {"phone": "+55 11 98765-0001", "parameters": {"body.1": "x"}}],
    }
    refused = await admin.post("/admin/v1/campaigns", json=twice, headers=ADMIN)
    assert refused.status_code == 400
    assert refused.json()["detail"] == "recipients[1]: +55 11 98765-0001 is already on recipients[0]"
    nobody = await admin.post("/admin/v1/campaigns", json={**body, "tenant": "t-nobody"}, headers=ADMIN)
    assert (nobody.status_code, nobody.json()["detail"]) == (400, "no tenant named t-nobody in the registry")
    assert (await admin.post("/admin/v1/campaigns", json={"tenant": tenant.name}, headers=ADMIN)).status_code == 422

    csv_query = {"tenant": tenant.name, "template": "promo", "language": "es", "category": "utility"}
    uploaded = await admin.post(
        "/admin/v1/campaigns/csv",
        params=csv_query,
        content="phone,body.1,button.0\n+5491122334455,Ana,promo-ana\n",
        headers={**ADMIN, "Content-Type": "text/csv"},
    )
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["template"]["category"] == "utility"
    bad_csv = await admin.post(
        "/admin/v1/campaigns/csv",
        params=csv_query,
        content="phone,body.1\n+5491122334455\nnot a phone,Bia\n",
        headers={**ADMIN, "Content-Type": "text/csv"},
    )
    assert bad_csv.status_code == 400
    assert bad_csv.json()["detail"].startswith(
        "line 2: 1 fields, the header has 2 (phone, body.1); line 3: not a phone"
    )
    latin1 = await admin.post(
        "/admin/v1/campaigns/csv", params=csv_query, content="phone,body.1\n5511987650001,Jo\xe3o\n".encode("latin-1"),
        headers={**ADMIN, "Content-Type": "text/csv"},
    )  # fmt: skip
    assert (latin1.status_code, latin1.json()["detail"]) == (400, "the CSV is not UTF-8 text (save it as CSV UTF-8)")

    listed = await admin.get("/admin/v1/campaigns", params={"tenant": tenant.name}, headers=ADMIN)
    assert [c["id"] for c in listed.json()] == [uploaded.json()["id"], campaign["id"]]
    shown = await admin.get(f"/admin/v1/campaigns/{campaign['id']}", headers=ADMIN)
    assert shown.status_code == 200
    assert (shown.json()["progress"]["queued"], shown.json()["outcomes"]) == (2, [])

    cancelled = await admin.post(f"/admin/v1/campaigns/{campaign['id']}/cancel", headers=ADMIN)
    assert cancelled.status_code == 200
    assert (cancelled.json()["status"], cancelled.json()["progress"]["skipped"]) == ("cancelled", 2)
    again = await admin.post(f"/admin/v1/campaigns/{campaign['id']}/cancel", headers=ADMIN)
    assert again.status_code == 409 and "already ended" in again.json()["detail"]
    assert (await admin.get("/admin/v1/campaigns/000000000000", headers=ADMIN)).status_code == 404
    assert (await admin.get("/admin/v1/campaigns/not-an-id", headers=ADMIN)).status_code == 422
