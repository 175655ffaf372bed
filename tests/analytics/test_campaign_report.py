"""`zapflow report --campaigns` over a hand-made analytics file, each figure worked out by hand.

Two tenants' campaigns created 2026-03-01..03-03, and acme's just outside (02-28 23:59:59 and
03-04 00:00:00), which a report of those three days leaves out:

- acme aaaa00000001, created 03-01 09:00, done: 17 recipients, 2 sent, 5 delivered, 3 read (10
  reached Meta: 80% delivered, 30% read), 4 failed (3 marketing_stopped 131050, 1 failed 131026),
  3 skipped (2 opted_out, 1 marketing_stopped). Its top 3 reasons: 3, 2, then of the two 1s the
  failed one (statuses in order).
- acme aaaa00000003, created 03-02 10:00, cancelled: 4 skipped (cancelled), none sent: no rates.
- acme aaaa00000002, created 03-03 23:30, running: 5 queued, 2 sending, 3 sent (none delivered).
- bolt bbbb00000002, created 03-01 08:00, done: 1 delivered, 1 read.
- bolt bbbb00000001, created 03-02 12:00, failed (the template): 6 failed template_rejected 132001.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import cli_environment, run_zapflow
from zapflow.analytics.report import (
    CampaignRow,
    OutcomeCount,
    Period,
    archived_campaigns,
    build_campaign_report,
)
from zapflow.analytics.warehouse import open_warehouse
from zapflow.platform.stackfile import StackAddresses, record

ARCHIVED_AT = "2026-03-20 00:00:00"
THREE_DAYS = Period(dt.date(2026, 3, 1), dt.date(2026, 3, 3))
THREE_DAYS_ARGS = ("--since", "2026-03-01", "--until", "2026-03-03")


def campaign(
    tenant: str,
    campaign_id: str,
    name: str,
    template: str,
    created_at: str,
    status: str,
    reason: str | None = None,
    *,
    queued: int = 0,
    sending: int = 0,
    sent: int = 0,
    delivered: int = 0,
    read: int = 0,
    failed: int = 0,
    skipped: int = 0,
) -> tuple[object, ...]:
    by_state = (queued, sending, sent, delivered, read, failed, skipped)
    return (tenant, campaign_id, name, template, "pt_BR", "marketing", status, reason, created_at, created_at,
            ARCHIVED_AT, sum(by_state), *by_state, ARCHIVED_AT)  # fmt: skip


CAMPAIGNS = [
    campaign("acme", "aaaa00000000", "February", "feb_promo", "2026-02-28 23:59:59", "done", read=1),
    campaign("acme", "aaaa00000001", "March promo", "march_promo", "2026-03-01 09:00:00", "done",
             sent=2, delivered=5, read=3, failed=4, skipped=3),
    campaign("acme", "aaaa00000003", "Easter", "easter", "2026-03-02 10:00:00", "cancelled", "cancelled", skipped=4),
    campaign("acme", "aaaa00000002", "Reminder", "payment_reminder", "2026-03-03 23:30:00", "running",
             queued=5, sending=2, sent=3),
    campaign("acme", "aaaa00000009", "April", "april_promo", "2026-03-04 00:00:00", "scheduled", queued=9),
    campaign("bolt", "bbbb00000002", "Welcome back", "welcome", "2026-03-01 08:00:00", "done", delivered=1, read=1),
    campaign("bolt", "bbbb00000001", "Launch", "launch_v2", "2026-03-02 12:00:00", "failed",
             "Meta refused the template (error 132001)", failed=6),
]  # fmt: skip
OUTCOMES = [
    ("acme", "aaaa00000001", "failed", "marketing_stopped", 131050, 3),
    ("acme", "aaaa00000001", "failed", "failed", 131026, 1),
    ("acme", "aaaa00000001", "skipped", "opted_out", None, 2),
    ("acme", "aaaa00000001", "skipped", "marketing_stopped", None, 1),
    ("acme", "aaaa00000003", "skipped", "cancelled", None, 4),
    ("bolt", "bbbb00000001", "failed", "template_rejected", 132001, 6),
]

MARCH_PROMO = CampaignRow(
    tenant="acme",
    campaign="aaaa00000001",
    name="March promo",
    template="march_promo",
    created=dt.datetime(2026, 3, 1, 9),
    status="done",
    recipients=17,
    sent=10,  # 2 sent + 5 delivered + 3 read
    delivery_rate=0.8,  # (5 + 3) / 10
    read_rate=0.3,
    failed=4,
    skipped=3,
    waiting=0,
    top_reasons=(
        OutcomeCount("failed", "marketing_stopped", 131050, 3),
        OutcomeCount("skipped", "opted_out", None, 2),
        OutcomeCount("failed", "failed", 131026, 1),  # before skipped marketing_stopped 1: failed < skipped
    ),
)
EASTER = CampaignRow(
    tenant="acme",
    campaign="aaaa00000003",
    name="Easter",
    template="easter",
    created=dt.datetime(2026, 3, 2, 10),
    status="cancelled",
    recipients=4,
    sent=0,
    delivery_rate=None,
    read_rate=None,
    failed=0,
    skipped=4,
    waiting=0,
    top_reasons=(OutcomeCount("skipped", "cancelled", None, 4),),
)
REMINDER = CampaignRow(
    tenant="acme",
    campaign="aaaa00000002",
    name="Reminder",
    template="payment_reminder",
    created=dt.datetime(2026, 3, 3, 23, 30),
    status="running",
    recipients=10,
    sent=3,
    delivery_rate=0.0,
    read_rate=0.0,
    failed=0,
    skipped=0,
    waiting=7,  # 5 queued + 2 sending
    top_reasons=(),
)
WELCOME_BACK = CampaignRow(
    tenant="bolt",
    campaign="bbbb00000002",
    name="Welcome back",
    template="welcome",
    created=dt.datetime(2026, 3, 1, 8),
    status="done",
    recipients=2,
    sent=2,
    delivery_rate=1.0,
    read_rate=0.5,
    failed=0,
    skipped=0,
    waiting=0,
    top_reasons=(),
)
LAUNCH = CampaignRow(
    tenant="bolt",
    campaign="bbbb00000001",
    name="Launch",
    template="launch_v2",
    created=dt.datetime(2026, 3, 2, 12),
    status="failed",
    recipients=6,
    sent=0,
    delivery_rate=None,
    read_rate=None,
    failed=6,
    skipped=0,
    waiting=0,
    top_reasons=(OutcomeCount("failed", "template_rejected", 132001, 6),),
)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The analytics file above; reports only read it, so the tests share one."""
    path = tmp_path_factory.mktemp("campaigns") / "analytics.duckdb"
    with open_warehouse(path) as connection:
        for table, rows in (("campaigns", CAMPAIGNS), ("campaign_outcomes", OUTCOMES)):
            placeholders = ", ".join("?" * len(rows[0]))
            connection.executemany(f"INSERT INTO {table} VALUES ({placeholders})", rows)  # noqa: S608 - our tables
    return path


def report(path: Path, period: Period, tenant: str | None = None) -> list[CampaignRow]:
    with open_warehouse(path, read_only=True) as connection:
        return build_campaign_report(connection, period, tenant)


def zapflow_report(*args: str, columns: int = 1000) -> subprocess.CompletedProcess[str]:
    return run_zapflow(cli_environment(COLUMNS=str(columns)), "report", "--campaigns", *args)


def test_every_campaign_created_in_the_period_with_its_figures(warehouse: Path) -> None:
    assert report(warehouse, THREE_DAYS) == [MARCH_PROMO, EASTER, REMINDER, WELCOME_BACK, LAUNCH]


def test_a_tenant_or_a_period_keeps_only_its_campaigns(warehouse: Path) -> None:
    assert report(warehouse, THREE_DAYS, "bolt") == [WELCOME_BACK, LAUNCH]
    assert report(warehouse, THREE_DAYS, "nobody") == []
    # A campaign belongs to the UTC day it was created in, to the second.
    for day, campaigns in (("2026-02-28", ["aaaa00000000"]), ("2026-03-04", ["aaaa00000009"])):
        one_day = Period(dt.date.fromisoformat(day), dt.date.fromisoformat(day))
        assert [row.campaign for row in report(warehouse, one_day)] == campaigns


def test_a_file_written_before_campaigns_were_archived_has_none(tmp_path: Path) -> None:
    path = tmp_path / "older.duckdb"
    with open_warehouse(path) as older:  # as an older zapflow left it
        older.execute("DROP TABLE campaigns")
        older.execute("DROP TABLE campaign_outcomes")

    with open_warehouse(path, read_only=True) as connection:
        assert archived_campaigns(connection) == 0
        assert build_campaign_report(connection, THREE_DAYS) == []
    with open_warehouse(path) as writer:  # the next job that writes adds the tables
        assert writer.execute("SELECT count(*) FROM campaign_outcomes").fetchone() == (0,)


def test_csv(warehouse: Path) -> None:
    result = zapflow_report("--analytics", str(warehouse), *THREE_DAYS_ARGS, "--format", "csv")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "tenant,campaign,name,template,created,status,recipients,sent,delivery_rate,read_rate,failed,skipped,"
        "waiting,top_reasons\n"
        "acme,aaaa00000001,March promo,march_promo,2026-03-01T09:00:00Z,done,17,10,0.8,0.3,4,3,0,"
        "failed marketing_stopped (131050):3;skipped opted_out:2;failed failed (131026):1\n"
        "acme,aaaa00000003,Easter,easter,2026-03-02T10:00:00Z,cancelled,4,0,,,0,4,0,skipped cancelled:4\n"
        "acme,aaaa00000002,Reminder,payment_reminder,2026-03-03T23:30:00Z,running,10,3,0.0,0.0,0,0,7,\n"
        "bolt,bbbb00000002,Welcome back,welcome,2026-03-01T08:00:00Z,done,2,2,1.0,0.5,0,0,0,\n"
        "bolt,bbbb00000001,Launch,launch_v2,2026-03-02T12:00:00Z,failed,6,0,,,6,0,0,"
        "failed template_rejected (132001):6\n"
    )


def test_json(warehouse: Path) -> None:
    result = zapflow_report("--analytics", str(warehouse), *THREE_DAYS_ARGS, "--format", "json", "--tenant", "acme")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [row["campaign"] for row in rows] == ["aaaa00000001", "aaaa00000003", "aaaa00000002"]
    assert rows[0] == {
        "tenant": "acme",
        "campaign": "aaaa00000001",
        "name": "March promo",
        "template": "march_promo",
        "created": "2026-03-01T09:00:00Z",
        "status": "done",
        "recipients": 17,
        "sent": 10,
        "delivery_rate": 0.8,
        "read_rate": 0.3,
        "failed": 4,
        "skipped": 3,
        "waiting": 0,
        "top_reasons": [
            {"status": "failed", "reason": "marketing_stopped", "error_code": 131050, "count": 3},
            {"status": "skipped", "reason": "opted_out", "error_code": None, "count": 2},
            {"status": "failed", "reason": "failed", "error_code": 131026, "count": 1},
        ],
    }
    assert (rows[1]["delivery_rate"], rows[1]["read_rate"], rows[2]["top_reasons"]) == (None, None, [])


def cells(lines: list[str], title: str) -> list[list[str]]:
    """The body rows of the table under `title`, each a list of its stripped cells."""
    start = next(index for index, line in enumerate(lines) if line.strip().startswith(title))
    body: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("└"):
            return body
        if line.startswith("│"):
            body.append([cell.strip() for cell in line.strip()[1:-1].split("│")])
    raise AssertionError(f"no end to the table {title!r}")


def test_the_table_is_two_tables_that_fit_100_columns(warehouse: Path) -> None:
    result = zapflow_report("--analytics", str(warehouse), *THREE_DAYS_ARGS, columns=100)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100
    # Each row's cells; a cell too long for its column goes on in the row's next line.
    described = cells(lines, "campaigns created 2026-03-01 to 2026-03-03 (UTC days)")
    # A row's cells with their wrapped words put back together.
    joined: list[list[str]] = []
    for row in described:
        if row[0]:
            joined.append(row)
        else:
            joined[-1] = [f"{cell} {more}" if more else cell for cell, more in zip(joined[-1], row, strict=True)]
    assert joined == [
        ["acme", "aaaa00000001", "March promo", "march_promo", "2026-03-01 09:00", "done", "17"],
        ["acme", "aaaa00000003", "Easter", "easter", "2026-03-02 10:00", "cancelled", "4"],
        ["acme", "aaaa00000002", "Reminder", "payment_reminder", "2026-03-03 23:30", "running", "10"],
        ["bolt", "bbbb00000002", "Welcome back", "welcome", "2026-03-01 08:00", "done", "2"],
        ["bolt", "bbbb00000001", "Launch", "launch_v2", "2026-03-02 12:00", "failed", "6"],
    ]
    assert cells(lines, "their recipients") == [
        ["aaaa00000001", "10", "80.0%", "30.0%", "4", "3", "0", "failed marketing_stopped"],
        ["", "", "", "", "", "", "", "(131050):3"],
        ["", "", "", "", "", "", "", "skipped opted_out:2"],
        ["", "", "", "", "", "", "", "failed failed (131026):1"],
        ["aaaa00000003", "0", "-", "-", "0", "4", "0", "skipped cancelled:4"],
        ["aaaa00000002", "3", "0.0%", "0.0%", "0", "0", "7", ""],
        ["bbbb00000002", "2", "100.0%", "50.0%", "0", "0", "0", ""],
        ["bbbb00000001", "0", "-", "-", "6", "0", "0", "failed template_rejected"],
        ["", "", "", "", "", "", "", "(132001):6"],
    ]


def test_no_campaign_in_the_period_is_said_not_an_empty_table(warehouse: Path) -> None:
    result = zapflow_report("--analytics", str(warehouse), *THREE_DAYS_ARGS, "--tenant", "nobody")
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        "no campaigns created between 2026-03-01 and 2026-03-03 for nobody\n",
        "",
    )


def test_nothing_archived_yet_is_an_empty_report_that_says_why(tmp_path: Path) -> None:
    analytics = tmp_path / ".zapflow" / "analytics.duckdb"
    stack = StackAddresses("nats://127.0.0.1:1", "redis://127.0.0.1:1/0", "sqlite+aiosqlite:///x", str(analytics), "")
    record(tmp_path / ".zapflow", stack)
    why = (
        f"no campaign archived yet in {analytics}: the scheduler copies a campaign into it at its first tick after "
        "the campaign is created\n"
    )
    using = f"using the zapflow dev stack in .zapflow (analytics {analytics})\n"

    table = run_zapflow(cli_environment(), "report", "--campaigns", cwd=tmp_path)
    assert (table.returncode, table.stdout, table.stderr) == (0, why, using)
    # A document stays a valid one, empty; the reason goes beside it.
    as_json = run_zapflow(cli_environment(), "report", "--campaigns", "--format", "json", cwd=tmp_path)
    assert (as_json.returncode, as_json.stdout, as_json.stderr) == (0, "[]\n", using + why)
    as_csv = run_zapflow(cli_environment(), "report", "--campaigns", "--format", "csv", cwd=tmp_path)
    assert (as_csv.returncode, as_csv.stdout.count("\n"), as_csv.stderr) == (0, 1, using + why)
    assert as_csv.stdout.startswith("tenant,campaign,")

    with open_warehouse(analytics) as writer:  # sessions archived, no campaign yet
        writer.execute("INSERT INTO sessions VALUES ('acme', 1, 'k', ?, ?, 1, 1, 1, false, ?)", [ARCHIVED_AT] * 3)
    table = run_zapflow(cli_environment(), "report", "--campaigns", cwd=tmp_path)
    assert (table.returncode, table.stdout, table.stderr) == (0, why, using)


def test_a_plot_of_campaigns_is_a_one_line_error(warehouse: Path, tmp_path: Path) -> None:
    plot = tmp_path / "campaigns.png"
    result = zapflow_report("--analytics", str(warehouse), "--plot", str(plot))
    assert (result.returncode, result.stdout, result.stderr) == (
        1,
        "",
        "error: --plot draws the daily figures: it cannot be combined with --campaigns\n",
    )
    assert not plot.exists()
