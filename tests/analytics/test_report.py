"""The report's figures over the hand-made file of conftest.py, each worked out by hand."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from matplotlib.image import imread

from tests.analytics.conftest import SESSIONS
from zapflow.analytics.plot import plot_report
from zapflow.analytics.report import (
    Period,
    ReasonCount,
    ReportError,
    ReportRow,
    RuleCount,
    build_report,
    report_period,
)
from zapflow.analytics.warehouse import WarehouseError, open_warehouse

MARCH_1, MARCH_2, MARCH_3 = dt.date(2026, 3, 1), dt.date(2026, 3, 2), dt.date(2026, 3, 3)
THREE_DAYS = Period(MARCH_1, MARCH_3)

ACME_MARCH_1 = ReportRow(
    tenant="acme",
    day=MARCH_1,
    conversations=2,
    messages_in=4,
    messages_out=4,
    turns=9,
    response_p50_ms=300.0,  # the 4th of 50, 100, 200, 300, 400, 600, 1000
    response_p95_ms=880.0,  # rank 6 × 0.95 = 5.7: 600 + 0.7 × (1000 - 600)
    fallback_rate=2 / 9,
    handoff_rate=0.5,
    delivery_rate=0.75,
    read_rate=0.5,
    top_rules=(RuleCount("menu", 2), RuleCount("prices", 2), RuleCount("hours", 1)),  # zebra 1 loses on its name
    handoffs=3,
    handoff_reasons=(ReasonCount("customer_asked", 2), ReasonCount("llm", 1)),
    handoff_to_agent_p50_s=45.0,  # between 30 and 60; the third was never given to an agent
    handoff_first_reply_p50_s=210.0,  # between 120 and 300
    handoff_resolve_p50_s=1080.0,  # of 600, 1080, 1800
    handoffs_unanswered=1,
)
ACME_MARCH_2 = ReportRow(
    tenant="acme",
    day=MARCH_2,
    conversations=1,
    messages_in=3,
    messages_out=2,
    turns=2,
    response_p50_ms=100.0,  # between 80 and 120
    response_p95_ms=118.0,  # 80 + 0.95 × 40
    fallback_rate=0.0,
    handoff_rate=0.0,
    delivery_rate=0.5,
    read_rate=0.0,
    top_rules=(RuleCount("prices", 1),),
    handoffs=0,
    handoff_reasons=(),
    handoff_to_agent_p50_s=None,
    handoff_first_reply_p50_s=None,
    handoff_resolve_p50_s=None,
    handoffs_unanswered=0,
)
ACME_MARCH_3 = ReportRow(
    tenant="acme",
    day=MARCH_3,
    conversations=0,
    messages_in=1,
    messages_out=0,
    turns=0,
    response_p50_ms=None,
    response_p95_ms=None,
    fallback_rate=None,
    handoff_rate=None,
    delivery_rate=None,
    read_rate=None,
    top_rules=(),
    handoffs=0,
    handoff_reasons=(),
    handoff_to_agent_p50_s=None,
    handoff_first_reply_p50_s=None,
    handoff_resolve_p50_s=None,
    handoffs_unanswered=0,
)
BOLT_MARCH_1 = ReportRow(
    tenant="bolt",
    day=MARCH_1,
    conversations=0,
    messages_in=0,
    messages_out=0,
    turns=0,
    response_p50_ms=None,
    response_p95_ms=None,
    fallback_rate=None,
    handoff_rate=None,
    delivery_rate=None,
    read_rate=None,
    top_rules=(),
    handoffs=0,
    handoff_reasons=(),
    handoff_to_agent_p50_s=None,
    handoff_first_reply_p50_s=None,
    handoff_resolve_p50_s=None,
    handoffs_unanswered=0,
)
BOLT_MARCH_2 = ReportRow(
    tenant="bolt",
    day=MARCH_2,
    conversations=1,
    messages_in=1,
    messages_out=1,
    turns=1,
    response_p50_ms=40.0,
    response_p95_ms=40.0,
    fallback_rate=0.0,
    handoff_rate=1.0,
    delivery_rate=1.0,
    read_rate=1.0,
    top_rules=(),
    handoffs=1,
    handoff_reasons=(ReasonCount("agent_took", 1),),
    handoff_to_agent_p50_s=0.0,
    handoff_first_reply_p50_s=20.0,
    handoff_resolve_p50_s=100.0,
    handoffs_unanswered=0,
)
BOLT_MARCH_3 = ReportRow(
    tenant="bolt",
    day=MARCH_3,
    conversations=1,
    messages_in=2,
    messages_out=1,
    turns=2,
    response_p50_ms=70.0,  # the prices turn has no latency
    response_p95_ms=70.0,
    fallback_rate=0.5,
    handoff_rate=0.0,
    delivery_rate=0.0,
    read_rate=0.0,
    top_rules=(RuleCount("prices", 1),),
    handoffs=0,
    handoff_reasons=(),
    handoff_to_agent_p50_s=None,
    handoff_first_reply_p50_s=None,
    handoff_resolve_p50_s=None,
    handoffs_unanswered=0,
)


def report(path: Path, period: Period, tenant: str | None = None) -> list[ReportRow]:
    connection = open_warehouse(path, read_only=True)
    try:
        return build_report(connection, period, tenant)
    finally:
        connection.close()


def test_every_figure_of_every_tenant_and_day(warehouse: Path) -> None:
    assert report(warehouse, THREE_DAYS) == [
        ACME_MARCH_1,
        ACME_MARCH_2,
        ACME_MARCH_3,
        BOLT_MARCH_1,
        BOLT_MARCH_2,
        BOLT_MARCH_3,
    ]


def test_a_tenant_filter_keeps_only_that_tenant(warehouse: Path) -> None:
    assert report(warehouse, THREE_DAYS, "bolt") == [BOLT_MARCH_1, BOLT_MARCH_2, BOLT_MARCH_3]
    assert report(warehouse, THREE_DAYS, "nobody") == []


def test_a_date_range_gives_the_same_figures_for_its_days(warehouse: Path) -> None:
    assert report(warehouse, Period(MARCH_2, MARCH_2)) == [ACME_MARCH_2, BOLT_MARCH_2]


def test_a_tenant_without_activity_in_the_range_has_no_rows(warehouse: Path) -> None:
    assert report(warehouse, Period(dt.date(2026, 2, 28), dt.date(2026, 2, 28))) == [
        ReportRow(
            tenant="acme",
            day=dt.date(2026, 2, 28),
            conversations=1,
            messages_in=1,
            messages_out=0,
            turns=1,
            response_p50_ms=5.0,
            response_p95_ms=5.0,
            fallback_rate=0.0,
            handoff_rate=1.0,
            delivery_rate=None,
            read_rate=None,
            top_rules=(RuleCount("prices", 1),),
            handoffs=1,
            handoff_reasons=(ReasonCount("rule", 1),),
            handoff_to_agent_p50_s=10.0,
            handoff_first_reply_p50_s=40.0,
            handoff_resolve_p50_s=400.0,
            handoffs_unanswered=0,
        )
    ]


def test_a_file_without_the_tables_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.duckdb"
    open_warehouse(path).execute("DROP TABLE turns").close()
    connection = open_warehouse(path, read_only=True)
    with pytest.raises(WarehouseError, match=r"^cannot read the analytics tables: .*turns[^\n]*$"):
        build_report(connection, THREE_DAYS)
    connection.close()


def test_a_file_written_before_handoffs_were_archived_reports_none(tmp_path: Path) -> None:
    path = tmp_path / "older.duckdb"
    with open_warehouse(path) as older:  # as an older zapflow left it: no handoffs table
        older.execute("DROP TABLE handoffs")
        older.execute("DROP TABLE archive_progress")
        older.executemany(f"INSERT INTO sessions VALUES ({', '.join('?' * len(SESSIONS[0]))})", SESSIONS)  # noqa: S608

    rows = report(path, Period(MARCH_2, MARCH_2), "bolt")

    assert [(row.conversations, row.handoff_rate, row.handoffs) for row in rows] == [(1, 1.0, 0)]
    with open_warehouse(path) as writer:  # the next job that writes adds the table
        assert writer.execute("SELECT count(*) FROM handoffs").fetchone() == (0,)


TODAY = dt.date(2026, 3, 31)


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        (None, None, Period(dt.date(2026, 3, 2), TODAY)),
        (None, "2026-03-03", Period(dt.date(2026, 2, 2), MARCH_3)),
        ("2026-03-01", None, Period(MARCH_1, TODAY)),
        ("2026-03-02", "2026-03-02", Period(MARCH_2, MARCH_2)),
    ],
)
def test_the_period_defaults_to_the_30_days_ending_today(
    since: str | None, until: str | None, expected: Period
) -> None:
    assert report_period(since, until, today=TODAY) == expected


@pytest.mark.parametrize(
    ("since", "until", "message"),
    [
        ("2026-03-32", None, "--since: '2026-03-32' is not a date (YYYY-MM-DD)"),
        (None, "yesterday", "--until: 'yesterday' is not a date (YYYY-MM-DD)"),
        ("2026-03-04", "2026-03-03", "--since 2026-03-04 is after --until 2026-03-03"),
        ("2026-04-01", None, "--since 2026-04-01 is after --until 2026-03-31"),
    ],
)
def test_bad_periods_say_why(since: str | None, until: str | None, message: str) -> None:
    with pytest.raises(ReportError) as raised:
        report_period(since, until, today=TODAY)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    "rows", [[], [ACME_MARCH_1, ACME_MARCH_2, ACME_MARCH_3]], ids=["no data", "one tenant, a day without turns"]
)
def test_the_plot_is_a_png_also_for_a_single_tenant_or_no_data(rows: list[ReportRow], tmp_path: Path) -> None:
    path = tmp_path / "report.png"
    plot_report(rows, THREE_DAYS, path)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    height, width, _ = imread(path).shape
    assert (width, height) == (1200, 800)
