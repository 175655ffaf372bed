"""`zapflow report`: figures per tenant and UTC day from the analytics file, and their renderings.

Every figure is aggregated inside DuckDB, so the report costs one scan of each table whatever
its size; Python only shapes the few rows that come back (one per tenant and day). With
`--campaigns`, one row per campaign created in the period instead.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import duckdb
from rich.console import Group, RenderableType
from rich.table import Column, Table
from rich.text import Text

from zapflow.analytics.warehouse import WarehouseError, readable
from zapflow.tenants.model import DataSpec

DEFAULT_DAYS = 30
TOP_RULES = 3
TOP_REASONS = 3
FORMATS = ("table", "csv", "json")


class ReportError(Exception):
    """The report was asked for with bad options; the message says which and why."""


@dataclass(frozen=True)
class Period:
    """UTC days, both included."""

    since: dt.date
    until: dt.date


@dataclass(frozen=True)
class RuleCount:
    rule: str
    count: int


@dataclass(frozen=True)
class ReasonCount:
    reason: str
    count: int


@dataclass(frozen=True)
class ReportRow:
    """One tenant's figures for one UTC day; a rate is None when nothing was there to count."""

    tenant: str
    day: dt.date
    conversations: int  # sessions opened that day
    messages_in: int
    messages_out: int
    turns: int
    response_p50_ms: float | None  # over the day's turns that have a latency
    response_p95_ms: float | None
    fallback_rate: float | None  # fallback or error_fallback turns / turns
    handoff_rate: float | None  # of the sessions opened that day, the share handed off
    delivery_rate: float | None  # outbound messages delivered or read / outbound messages
    read_rate: float | None  # outbound messages read / outbound messages
    top_rules: tuple[RuleCount, ...]  # the most frequent rules of the day's turns, ties by name
    # Handoffs asked for that day; the analytics file has a handoff once it is resolved.
    handoffs: int
    handoff_reasons: tuple[ReasonCount, ...]  # every reason of the day's handoffs, most first, ties by name
    handoff_to_agent_p50_s: float | None  # median, asked for -> first given to an agent (over those that were)
    handoff_first_reply_p50_s: float | None  # median, asked for -> first agent message (over those with one)
    handoff_resolve_p50_s: float | None  # median, asked for -> resolved
    handoffs_unanswered: int  # resolved without an agent message: timed out, or handed back unanswered


COLUMNS = tuple(field.name for field in fields(ReportRow))


@dataclass(frozen=True)
class OutcomeCount:
    """A campaign's recipients that failed, or were skipped, for one reason (and Meta's error code)."""

    status: str  # failed | skipped
    reason: str | None
    error_code: int | None
    count: int

    @property
    def label(self) -> str:
        """`failed marketing_stopped (131050)`, `skipped opted_out`: the status, as a reason may be either's."""
        code = f" ({self.error_code})" if self.error_code is not None else ""
        return " ".join(part for part in (self.status, self.reason) if part) + code


@dataclass(frozen=True)
class CampaignRow:
    """One campaign created in the period, its recipients as last archived; a rate is None when none was sent."""

    tenant: str
    campaign: str  # its id
    name: str
    template: str  # the template's name
    created: dt.datetime  # UTC
    status: str  # scheduled | running | waiting | done | cancelled | failed
    recipients: int
    sent: int  # messages that reached Meta: sent, delivered or read
    delivery_rate: float | None  # delivered or read / sent
    read_rate: float | None  # read / sent
    failed: int
    skipped: int
    waiting: int  # queued (deferred ones included) or sending
    top_reasons: tuple[OutcomeCount, ...]  # the largest groups of failed and skipped recipients


CAMPAIGN_COLUMNS = tuple(field.name for field in fields(CampaignRow))


def report_period(since: str | None, until: str | None, *, today: dt.date) -> Period:
    """The days to report: `until` defaults to today, `since` to the 30 days ending at `until`."""
    last = _parse_day("--until", until) if until is not None else today
    first = _parse_day("--since", since) if since is not None else last - dt.timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise ReportError(f"--since {first} is after --until {last}")
    return Period(first, last)


def _parse_day(option: str, value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ReportError(f"{option}: {value!r} is not a date (YYYY-MM-DD)") from None


# Every day of the period for every tenant with any activity in it, so a quiet day is a row of
# zeros rather than a gap that a chart would draw a line across. Times are filtered as ranges
# (not by casting each to a date) so DuckDB can skip whole row groups by their min/max.
# Percentiles are quantile_cont: the linear interpolation between the two closest ranks (numpy's
# default, Hyndman-Fan type 7), rounded to 0.1 ms (0.1 s for handoffs). A handoff counts on the day
# it was asked for, like a session on the day it opened.
REPORT_SQL = """
WITH
bounds AS (
    SELECT $since::TIMESTAMP AS first_instant, ($until::DATE + 1)::TIMESTAMP AS end_instant
),
opened AS (
    SELECT tenant, opened_at::DATE AS day,
           count(*) AS conversations,
           count(*) FILTER (handed_off) AS handed_off
    FROM sessions, bounds
    WHERE opened_at >= first_instant AND opened_at < end_instant AND ($tenant IS NULL OR tenant = $tenant)
    GROUP BY ALL
),
sent AS (
    SELECT tenant, created_at::DATE AS day,
           count(*) FILTER (direction = 'inbound') AS messages_in,
           count(*) FILTER (direction = 'outbound') AS messages_out,
           count(*) FILTER (direction = 'outbound' AND (delivered_at IS NOT NULL OR read_at IS NOT NULL)) AS delivered,
           count(*) FILTER (direction = 'outbound' AND read_at IS NOT NULL) AS read
    FROM messages, bounds
    WHERE created_at >= first_instant AND created_at < end_instant AND ($tenant IS NULL OR tenant = $tenant)
    GROUP BY ALL
),
day_turns AS (
    SELECT tenant, created_at::DATE AS day, outcome, rule, latency_ms
    FROM turns, bounds
    WHERE created_at >= first_instant AND created_at < end_instant AND ($tenant IS NULL OR tenant = $tenant)
),
answered AS (
    SELECT tenant, day,
           count(*) AS turns,
           round(quantile_cont(latency_ms, 0.5), 1) AS response_p50_ms,
           round(quantile_cont(latency_ms, 0.95), 1) AS response_p95_ms,
           count(*) FILTER (outcome IN ('fallback', 'error_fallback')) AS fallbacks
    FROM day_turns
    GROUP BY ALL
),
rule_hits AS (
    SELECT tenant, day, rule, count(*) AS hits
    FROM day_turns
    WHERE rule IS NOT NULL
    GROUP BY tenant, day, rule
    QUALIFY row_number() OVER (PARTITION BY tenant, day ORDER BY hits DESC, rule) <= $top_rules
),
top_rules AS (
    SELECT tenant, day, list({'rule': rule, 'count': hits} ORDER BY hits DESC, rule) AS top_rules
    FROM rule_hits
    GROUP BY ALL
),
day_handoffs AS (
    SELECT tenant, requested_at::DATE AS day, reason, wait_s, first_reply_s, resolve_s
    FROM handoffs, bounds
    WHERE requested_at >= first_instant AND requested_at < end_instant AND ($tenant IS NULL OR tenant = $tenant)
),
asked AS (
    SELECT tenant, day,
           count(*) AS handoffs,
           round(quantile_cont(wait_s, 0.5), 1) AS handoff_to_agent_p50_s,
           round(quantile_cont(first_reply_s, 0.5), 1) AS handoff_first_reply_p50_s,
           round(quantile_cont(resolve_s, 0.5), 1) AS handoff_resolve_p50_s,
           count(*) FILTER (first_reply_s IS NULL) AS handoffs_unanswered
    FROM day_handoffs
    GROUP BY ALL
),
reasons AS (
    SELECT tenant, day, list({'reason': reason, 'count': asked} ORDER BY asked DESC, reason) AS handoff_reasons
    FROM (SELECT tenant, day, reason, count(*) AS asked FROM day_handoffs GROUP BY ALL)
    GROUP BY ALL
),
active_tenants AS (
    SELECT tenant FROM opened UNION SELECT tenant FROM sent UNION SELECT tenant FROM answered
    UNION SELECT tenant FROM asked
),
days AS (
    SELECT unnest(range(first_instant, end_instant, INTERVAL 1 DAY))::DATE AS day FROM bounds
)
SELECT tenant,
       day,
       coalesce(conversations, 0),
       coalesce(messages_in, 0),
       coalesce(messages_out, 0),
       coalesce(turns, 0),
       response_p50_ms,
       response_p95_ms,
       fallbacks / nullif(turns, 0),
       handed_off / nullif(conversations, 0),
       delivered / nullif(messages_out, 0),
       read / nullif(messages_out, 0),
       coalesce(top_rules, []),
       coalesce(handoffs, 0),
       coalesce(handoff_reasons, []),
       handoff_to_agent_p50_s,
       handoff_first_reply_p50_s,
       handoff_resolve_p50_s,
       coalesce(handoffs_unanswered, 0)
FROM active_tenants
CROSS JOIN days
LEFT JOIN opened USING (tenant, day)
LEFT JOIN sent USING (tenant, day)
LEFT JOIN answered USING (tenant, day)
LEFT JOIN top_rules USING (tenant, day)
LEFT JOIN asked USING (tenant, day)
LEFT JOIN reasons USING (tenant, day)
ORDER BY tenant, day
"""


def build_report(connection: duckdb.DuckDBPyConnection, period: Period, tenant: str | None = None) -> list[ReportRow]:
    """The report's rows, ordered by tenant then day; `tenant` None means every tenant."""
    try:
        records = (
            readable(connection)
            .execute(
                REPORT_SQL, {"since": period.since, "until": period.until, "tenant": tenant, "top_rules": TOP_RULES}
            )
            .fetchall()
        )
    except duckdb.Error as error:
        # DuckDB's messages go on with hints and the offending SQL: the first line says it.
        raise WarehouseError(f"cannot read the analytics tables: {str(error).splitlines()[0]}") from None
    return [_report_row(record) for record in records]


# A campaign counts in the period it was created in, whatever its recipients did since; its figures
# are those of its last copy. Its outcome groups are ranked by size, then status, reason and code.
CAMPAIGN_REPORT_SQL = """
WITH
bounds AS (
    SELECT $since::TIMESTAMP AS first_instant, ($until::DATE + 1)::TIMESTAMP AS end_instant
),
created AS (
    SELECT campaigns.*, sent + delivered + read AS reached
    FROM campaigns, bounds
    WHERE created_at >= first_instant AND created_at < end_instant AND ($tenant IS NULL OR tenant = $tenant)
),
ranked AS (
    SELECT tenant, campaign_id, outcome.status, outcome.reason, outcome.error_code, outcome.count
    FROM campaign_outcomes AS outcome JOIN created USING (tenant, campaign_id)
    QUALIFY row_number() OVER (
        PARTITION BY tenant, campaign_id
        ORDER BY outcome.count DESC, outcome.status, outcome.reason NULLS FIRST, outcome.error_code NULLS FIRST
    ) <= $top_reasons
),
reasons AS (
    SELECT tenant, campaign_id,
           list({'status': status, 'reason': reason, 'error_code': error_code, 'count': count}
                ORDER BY count DESC, status, reason NULLS FIRST, error_code NULLS FIRST) AS top_reasons
    FROM ranked
    GROUP BY ALL
)
SELECT tenant,
       campaign_id,
       name,
       template_name,
       created_at,
       status,
       recipients,
       reached,
       (delivered + read) / nullif(reached, 0),
       read / nullif(reached, 0),
       failed,
       skipped,
       queued + sending,
       coalesce(top_reasons, [])
FROM created
LEFT JOIN reasons USING (tenant, campaign_id)
ORDER BY tenant, created_at, campaign_id
"""


def build_campaign_report(
    connection: duckdb.DuckDBPyConnection, period: Period, tenant: str | None = None
) -> list[CampaignRow]:
    """The campaigns created in the period, ordered by tenant then creation; `tenant` None means every tenant."""
    parameters = {"since": period.since, "until": period.until, "tenant": tenant, "top_reasons": TOP_REASONS}
    try:
        records = readable(connection).execute(CAMPAIGN_REPORT_SQL, parameters).fetchall()
    except duckdb.Error as error:
        raise WarehouseError(f"cannot read the analytics tables: {str(error).splitlines()[0]}") from None
    return [_campaign_row(record) for record in records]


def archived_campaigns(connection: duckdb.DuckDBPyConnection) -> int:
    """How many campaigns the analytics file holds: none before the scheduler's first archival of one."""
    row = readable(connection).execute("SELECT count(*) FROM campaigns").fetchone()
    return int(row[0]) if row else 0


def no_campaigns_archived(path: Path) -> str:
    """Why a campaign report is empty when the analytics file is missing or holds no campaign."""
    return (
        f"no campaign archived yet in {path}: the scheduler copies a campaign into it at its first tick "
        "after the campaign is created"
    )


def archived_sessions(connection: duckdb.DuckDBPyConnection) -> int:
    """How many sessions the analytics file holds: none before the scheduler's first archival."""
    try:
        row = connection.execute("SELECT count(*) FROM sessions").fetchone()
    except duckdb.CatalogException:  # the tables are created with the first archival
        return 0
    return int(row[0]) if row else 0


def nothing_archived(path: Path) -> str:
    """Why a report is empty when the analytics file is missing or holds no session."""
    idle = DataSpec.model_fields["session_idle_minutes"].default
    return (
        f"nothing archived yet in {path}: the scheduler archives a conversation once it has been idle for "
        f"its tenant's sessionIdleMinutes ({idle} minutes by default)"
    )


def _report_row(record: tuple[Any, ...]) -> ReportRow:
    figures = dict(zip(COLUMNS, record, strict=True))
    figures["top_rules"] = tuple(RuleCount(**hit) for hit in figures["top_rules"])
    figures["handoff_reasons"] = tuple(ReasonCount(**asked) for asked in figures["handoff_reasons"])
    return ReportRow(**figures)


def _campaign_row(record: tuple[Any, ...]) -> CampaignRow:
    figures = dict(zip(CAMPAIGN_COLUMNS, record, strict=True))
    figures["top_reasons"] = tuple(OutcomeCount(**group) for group in figures["top_reasons"])
    return CampaignRow(**figures)


def _plain(row: ReportRow) -> dict[str, Any]:
    return asdict(row) | {"day": row.day.isoformat()}


def _plain_campaign(row: CampaignRow) -> dict[str, Any]:
    return asdict(row) | {"created": _utc(row.created)}


def _utc(moment: dt.datetime) -> str:
    """ISO 8601 to the second, with its zone: 2026-03-01T09:00:00Z."""
    return moment.isoformat(timespec="seconds") + "Z"


def campaigns_to_json(rows: list[CampaignRow]) -> str:
    return json.dumps([_plain_campaign(row) for row in rows], indent=2) + "\n"


def campaigns_to_csv(rows: list[CampaignRow]) -> str:
    """One line per campaign; an empty cell is a None; reasons as `failed marketing_stopped (131050):3;...`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CAMPAIGN_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        reasons = ";".join(f"{group.label}:{group.count}" for group in row.top_reasons)
        writer.writerow(_plain_campaign(row) | {"top_reasons": reasons})
    return buffer.getvalue()


def campaigns_to_table(rows: list[CampaignRow], period: Period) -> RenderableType:
    """Two tables with a row per campaign, by its id: what it is, then what became of its recipients.

    One table of fourteen columns would not fit a 100-column terminal.
    """
    # Ids and names a person copies (the campaign for `zapflow campaign show`, the template) are
    # never cut: the campaign's own name wraps instead.
    described = Table(
        "tenant",
        Column("campaign", no_wrap=True),
        Column("name", overflow="fold"),
        Column("template", no_wrap=True),
        Column("created (UTC)", no_wrap=True),
        "status",
        Column("recipients", justify="right"),
        title=f"campaigns created {period.since} to {period.until} (UTC days)",
    )
    figures = ("sent", "delivered", "read", "failed", "skipped", "waiting")
    outcomes = Table(
        Column("campaign", no_wrap=True),
        *(Column(header, justify="right") for header in figures),
        Column("top reasons", overflow="fold"),
        title="their recipients: delivered and read of those sent",
    )
    for row in rows:
        described.add_row(
            *map(
                Text,
                (
                    row.tenant,
                    row.campaign,
                    row.name,
                    row.template,
                    f"{row.created:%Y-%m-%d %H:%M}",
                    row.status,
                    f"{row.recipients:,}",
                ),
            )
        )
        outcomes.add_row(
            *map(
                Text,
                (
                    row.campaign,
                    f"{row.sent:,}",
                    _percent(row.delivery_rate),
                    _percent(row.read_rate),
                    f"{row.failed:,}",
                    f"{row.skipped:,}",
                    f"{row.waiting:,}",
                    "\n".join(f"{group.label}:{group.count}" for group in row.top_reasons),
                ),
            )
        )
    return Group(described, outcomes)


def to_json(rows: list[ReportRow]) -> str:
    return json.dumps([_plain(row) for row in rows], indent=2) + "\n"


def to_csv(rows: list[ReportRow]) -> str:
    """One line per tenant and day; an empty cell is a None; top rules and reasons as `name:count;name:count`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            _plain(row)
            | {
                "top_rules": ";".join(f"{hit.rule}:{hit.count}" for hit in row.top_rules),
                "handoff_reasons": ";".join(f"{asked.reason}:{asked.count}" for asked in row.handoff_reasons),
            }
        )
    return buffer.getvalue()


def to_table(rows: list[ReportRow], period: Period) -> RenderableType:
    """The daily figures; below them, when there were any, the days with handoffs."""
    daily = _daily_table(rows, period)
    handed = [row for row in rows if row.handoffs]
    return Group(daily, _handoffs_table(handed)) if handed else daily


def _handoffs_table(rows: list[ReportRow]) -> Table:
    figures = ("handoffs", "to agent", "1st reply", "resolved", "no reply")
    table = Table(
        "tenant",
        "day",
        *(Column(header, justify="right") for header in figures),
        "reasons",
        title="handoffs by the day asked for: medians from the request",
    )
    for row in rows:
        cells = (
            row.tenant,
            row.day.isoformat(),
            f"{row.handoffs:,}",
            duration(row.handoff_to_agent_p50_s),
            duration(row.handoff_first_reply_p50_s),
            duration(row.handoff_resolve_p50_s),
            f"{row.handoffs_unanswered:,}",
            ", ".join(f"{asked.reason} {asked.count}" for asked in row.handoff_reasons),
        )
        table.add_row(*map(Text, cells))
    return table


def _daily_table(rows: list[ReportRow], period: Period) -> Table:
    figures = ("conversations", "in", "out", "turns", "p50 ms", "p95 ms", "fallback", "handoff", "delivered", "read")
    table = Table(
        "tenant",
        "day",
        *(Column(header, justify="right") for header in figures),
        "top rules",
        title=f"zapflow report {period.since} to {period.until} (UTC days)",
    )
    for row in rows:
        cells = (
            row.tenant,
            row.day.isoformat(),
            f"{row.conversations:,}",
            f"{row.messages_in:,}",
            f"{row.messages_out:,}",
            f"{row.turns:,}",
            _milliseconds(row.response_p50_ms),
            _milliseconds(row.response_p95_ms),
            _percent(row.fallback_rate),
            _percent(row.handoff_rate),
            _percent(row.delivery_rate),
            _percent(row.read_rate),
            ", ".join(f"{hit.rule} {hit.count}" for hit in row.top_rules),
        )
        # Names are data, not rich markup (and Text skips the markup parser).
        table.add_row(*map(Text, cells))
    return table


def _milliseconds(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"


def duration(seconds: float | None) -> str:
    """Two units at most, the larger first: 45s, 4m05s, 2h10m, 3d04h."""
    if seconds is None:
        return "-"
    whole = round(seconds)
    for unit, size, smaller, smaller_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if whole >= size:
            return f"{whole // size}{unit}{whole % size // smaller_size:02d}{smaller}"
    return f"{whole}s"
