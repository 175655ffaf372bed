"""Benchmark of `zapflow report` over a realistic analytics file.

    uv run python bench/report.py                        # 1,000,000 messages, 5 tenants, 90 days
    uv run python bench/report.py --messages 100000 --runs 3

Generates a DuckDB analytics file (the tables of services/zapflow/analytics/warehouse.py) with
DuckDB SQL, then runs the whole `zapflow report` command over it as a subprocess (every tenant,
the whole range) several times per format and checks the target: the median run under 2 s. Writes
the figures to bench/results/report.json; bench/README.md explains the method.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/report.py` puts bench/, not the repo root, on the path
    sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

from zapflow.analytics.report import Period, build_report  # noqa: E402
from zapflow.analytics.warehouse import open_warehouse  # noqa: E402

TARGET_S = 2.0
TIMED_FORMATS = ("table", "csv", "json")
TENANT_NAMES = ("acme", "bolt", "casa-verde", "dona-flor", "eletro", "farmacia-sol", "giro", "horta")
RULES = ("prices", "menu", "hours", "delivery", "order-status", "payment", "location", "talk-to-sales")
INTENTS = ("order", "question", "complaint", "smalltalk", "tracking")
# The generator plans about 7.7 messages per session; planning one session per 6 messages leaves
# a margin, and the surplus sessions are dropped at random (not the last days).
MESSAGES_PER_PLANNED_SESSION = 6

# Every random draw is a hash of a row's key and a salt, so the same options give the same file
# whatever the number of threads (DuckDB's random() depends on how the work is split).
UNIT_MACRO = "CREATE OR REPLACE TEMP MACRO unit(key, salt) AS (hash(key, salt) % 1000000) / 1000000.0"

# Sessions spread evenly over the days, opening around midday UTC; a few tenants have most of
# the traffic; customers come back (a contact has several sessions); the last tenant (of three
# or more) answers with an LLM, the others with rules.
PLAN_SESSIONS = """
CREATE TEMP TABLE plan_sessions AS
WITH drawn AS (
    SELECT i AS session_id,
           least(floor($tenants * pow(unit(i, 'tenant'), 1.7)), $tenants - 1)::INTEGER AS tenant_index,
           floor((i - 1) * $days / $sessions)::INTEGER AS day_index,
           floor(86400 * (unit(i, 'hour1') + unit(i, 'hour2') + unit(i, 'hour3')) / 3)::INTEGER AS second_of_day,
           floor(greatest(10, $sessions / (3 * $tenants)) * pow(unit(i, 'contact'), 2))::INTEGER AS contact_no
    FROM range(1, $sessions + 1) AS r(i)
)
SELECT session_id,
       $names[tenant_index + 1] AS tenant,
       md5($names[tenant_index + 1] || ':' || contact_no) AS contact_key,
       $first_day::TIMESTAMP + to_days(day_index) + to_seconds(second_of_day) AS opened_at,
       1 + least(floor(6 * pow(unit(session_id, 'turns'), 1.5)), 5)::INTEGER AS turn_count,
       60 + floor(540 * unit(session_id, 'gap'))::INTEGER AS turn_gap_s,
       unit(session_id, 'new') < 0.3 AS new_contact,
       $tenants > 2 AND tenant_index = $tenants - 1 AS uses_llm
FROM drawn
"""

# A turn is a burst of 1-3 customer messages 3 s apart, closed 2 s after the last one (the
# debounce), answered after a log-normal-like latency by 0-2 messages 200 ms apart (a first
# contact whose turn fires a rule gets the greeting too; a silent turn gets nothing).
PLAN_TURNS = """
CREATE TEMP TABLE plan_turns AS
WITH exploded AS (
    SELECT *, unnest(range(turn_count)) AS k FROM plan_sessions
),
drawn AS (
    SELECT *,
           session_id * 8 + k AS turn_key,
           unit(session_id * 8 + k, 'outcome') AS u,
           unit(session_id * 8 + k, 'l1') + unit(session_id * 8 + k, 'l2') + unit(session_id * 8 + k, 'l3') - 1.5
               AS latency_draw
    FROM exploded
),
decided AS (
    SELECT *,
           1 + least(floor(3 * pow(unit(turn_key, 'burst'), 2)), 2)::INTEGER AS inbound,
           CASE
               WHEN uses_llm THEN CASE WHEN u < 0.90 THEN 'llm' WHEN u < 0.95 THEN 'error_fallback'
                                       WHEN u < 0.97 THEN 'handoff' ELSE 'silent' END
               WHEN k = 0 AND new_contact AND u < 0.35 THEN 'greeting'
               WHEN u < 0.70 THEN 'rule'
               WHEN u < 0.90 THEN 'fallback'
               WHEN u < 0.92 THEN 'error_fallback'
               WHEN u < 0.94 THEN 'handoff'
               ELSE 'silent'
           END AS outcome
    FROM drawn
)
SELECT session_id, k, tenant, contact_key, uses_llm, outcome, inbound,
       CASE outcome
           WHEN 'rule' THEN $rules[1 + floor(len($rules) * pow(unit(turn_key, 'rule'), 2))::INTEGER]
           WHEN 'llm' THEN $intents[1 + floor(len($intents) * pow(unit(turn_key, 'rule'), 2))::INTEGER]
       END AS rule,
       CASE
           WHEN outcome = 'silent' THEN 0
           WHEN outcome = 'rule' AND k = 0 AND new_contact THEN 2
           ELSE 1
       END AS outbound,
       CASE
           WHEN outcome = 'silent' THEN NULL
           WHEN uses_llm THEN least(round(900 * exp(1.2 * latency_draw)), 20000)
           ELSE round(25 * exp(1.6 * latency_draw))
       END::INTEGER AS latency_ms,
       CASE WHEN uses_llm THEN 250 + 120 * k + floor(300 * unit(turn_key, 'prompt')) ELSE 0 END::INTEGER
           AS prompt_tokens,
       CASE WHEN uses_llm THEN 20 + floor(200 * unit(turn_key, 'completion')) ELSE 0 END::INTEGER
           AS completion_tokens,
       opened_at + to_seconds(k * turn_gap_s) AS burst_at,
       opened_at + to_seconds(k * turn_gap_s + (inbound - 1) * 3 + 2) AS closed_at
FROM decided
"""

# `draw` keeps whole sessions in a random order until there are exactly $messages messages
# (only the last kept session may lose its end); the kept ones are then numbered in time order,
# as the relational store's ids are.
PLAN_MESSAGES = """
CREATE TEMP TABLE plan_messages AS
WITH exploded AS (
    SELECT session_id, k, inbound, unnest(range(inbound + outbound)) AS j,
           burst_at, closed_at + to_milliseconds(latency_ms) AS answered_at
    FROM plan_turns
),
drawn AS (
    SELECT *,
           j < inbound AS is_inbound,
           CASE WHEN j < inbound THEN burst_at + to_seconds(j * 3)
                ELSE answered_at + to_milliseconds((j - inbound) * 200) END AS created_at,
           row_number() OVER (ORDER BY hash(session_id, 'keep'), session_id, k, j) AS draw
    FROM exploded
)
SELECT session_id, k, is_inbound, created_at,
       row_number() OVER (ORDER BY created_at, session_id, k, j) AS message_id
FROM drawn
WHERE draw <= $messages
"""

# A turn's id is its first and last inbound message, as the engine names turns.
KEPT_TURNS = """
CREATE TEMP TABLE kept_turns AS
SELECT session_id, k,
       'in' || min(message_id) FILTER (is_inbound) || '-' || max(message_id) FILTER (is_inbound) AS turn_id,
       count(*) FILTER (is_inbound)::INTEGER AS message_count
FROM plan_messages
GROUP BY ALL
"""

INSERT_TURNS = """
INSERT INTO turns
SELECT t.tenant, t.session_id, kept.turn_id, t.contact_key,
       CASE WHEN t.uses_llm THEN 'openai' ELSE 'rules' END,
       t.outcome, t.rule, t.latency_ms, t.prompt_tokens, t.completion_tokens, kept.message_count,
       t.closed_at, t.closed_at + to_milliseconds(t.latency_ms)
FROM plan_turns t
JOIN kept_turns kept USING (session_id, k)
ORDER BY t.closed_at
"""

# Outbound statuses as Meta reports them: 1.5% failed (most for a closed 24-hour window), 4.5%
# only sent, 24% delivered, 70% read; each receipt after the previous one.
INSERT_MESSAGES = """
INSERT INTO messages
WITH drawn AS (
    SELECT m.*, t.tenant, t.contact_key, kept.turn_id,
           unit(m.message_id, 'status') AS u_status,
           unit(m.message_id, 'type') AS u_type,
           m.created_at + to_milliseconds(300 + floor(700 * unit(m.message_id, 'sent'))::BIGINT) AS sent_at
    FROM plan_messages m
    JOIN plan_turns t USING (session_id, k)
    JOIN kept_turns kept USING (session_id, k)
),
receipts AS (
    SELECT *,
           sent_at + to_milliseconds(1000 + floor(5000 * unit(message_id, 'delivered'))::BIGINT) AS delivered_at
    FROM drawn
)
SELECT tenant, session_id, message_id, contact_key,
       CASE WHEN is_inbound THEN 'inbound' ELSE 'outbound' END,
       CASE
           WHEN is_inbound THEN CASE WHEN u_type < 0.85 THEN 'text' WHEN u_type < 0.95 THEN 'interactive'
                                     WHEN u_type < 0.98 THEN 'image' ELSE 'audio' END
           ELSE CASE WHEN u_type < 0.6 THEN 'text' WHEN u_type < 0.97 THEN 'interactive' ELSE 'template' END
       END,
       turn_id,
       created_at,
       CASE WHEN NOT is_inbound THEN CASE WHEN u_status < 0.015 THEN 'failed' WHEN u_status < 0.06 THEN 'sent'
                                          WHEN u_status < 0.30 THEN 'delivered' ELSE 'read' END END,
       CASE WHEN NOT is_inbound AND u_status >= 0.015 THEN sent_at END,
       CASE WHEN NOT is_inbound AND u_status >= 0.06 THEN delivered_at END,
       CASE WHEN NOT is_inbound AND u_status >= 0.30
            THEN delivered_at + to_seconds(5 + floor(3600 * pow(unit(message_id, 'read'), 3))::BIGINT) END,
       CASE WHEN NOT is_inbound AND u_status < 0.015 THEN created_at + INTERVAL 500 MILLISECOND END,
       CASE WHEN NOT is_inbound AND u_status < 0.015
            THEN CASE WHEN unit(message_id, 'error') < 0.7 THEN 131047 ELSE 131026 END END
FROM receipts
ORDER BY message_id
"""

# A session closes 30 minutes after its last activity and is archived within the next hour;
# it was handed off when a turn ended in a handoff, or (1%) when an agent took it over.
INSERT_SESSIONS = """
INSERT INTO sessions
WITH sent AS (
    SELECT session_id,
           count(*) FILTER (direction = 'inbound')::INTEGER AS messages_in,
           count(*) FILTER (direction = 'outbound')::INTEGER AS messages_out,
           max(created_at) AS last_message_at
    FROM messages
    GROUP BY session_id
),
answered AS (
    SELECT session_id, count(*)::INTEGER AS turns, bool_or(outcome = 'handoff') AS handoff_turn,
           max(answered_at) AS last_answer_at
    FROM turns
    GROUP BY session_id
)
SELECT s.tenant, s.session_id, s.contact_key, s.opened_at,
       greatest(last_message_at, last_answer_at) + INTERVAL 30 MINUTE AS closed_at,
       messages_in, messages_out, turns,
       handoff_turn OR unit(s.session_id, 'agent') < 0.01,
       greatest(last_message_at, last_answer_at) + INTERVAL 30 MINUTE
           + to_seconds(floor(3600 * unit(s.session_id, 'archive'))::BIGINT)
FROM plan_sessions s
JOIN sent USING (session_id)
JOIN answered USING (session_id)
ORDER BY s.opened_at
"""


def generate(path: Path, *, messages: int, tenants: int, days: int, last_day: dt.date) -> dict[str, int]:
    """Write an analytics file of exactly `messages` messages over `days` UTC days ending at `last_day`."""
    if not 1 <= tenants <= len(TENANT_NAMES):
        raise ValueError(f"tenants must be between 1 and {len(TENANT_NAMES)}")
    sessions = messages // MESSAGES_PER_PLANNED_SESSION + 10
    parameters: dict[str, Any] = {
        "sessions": sessions,
        "tenants": tenants,
        "days": days,
        "names": list(TENANT_NAMES),
        "first_day": last_day - dt.timedelta(days=days - 1),
    }
    connection = open_warehouse(path)
    try:
        connection.execute(UNIT_MACRO)
        connection.execute(PLAN_SESSIONS, parameters)
        connection.execute(PLAN_TURNS, {"rules": list(RULES), "intents": list(INTENTS)})
        connection.execute(PLAN_MESSAGES, {"messages": messages})
        planned = _count(connection, "plan_messages")
        if planned < messages:
            raise ValueError(f"planned only {planned:,} messages for {messages:,}: raise MESSAGES_PER_PLANNED_SESSION")
        for statement in (KEPT_TURNS, INSERT_TURNS, INSERT_MESSAGES, INSERT_SESSIONS):
            connection.execute(statement)
        connection.execute("CHECKPOINT")
        return {table: _count(connection, table) for table in ("sessions", "turns", "messages")}
    finally:
        connection.close()


def _count(connection: duckdb.DuckDBPyConnection, table: str) -> int:
    row = connection.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608 - our own table names
    assert row is not None
    return int(row[0])


class CommandFailed(Exception):
    """A timed command exited with an error: the bench cannot measure it."""


def time_command(command: list[str], runs: int) -> list[float]:
    """Wall seconds of each run of the command; a failed run stops the bench with its stderr."""
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, env={**os.environ, "COLUMNS": "200"}
        )
        seconds.append(time.perf_counter() - started)
        if result.returncode != 0:
            raise CommandFailed(f"{' '.join(command)} exited with {result.returncode}: {result.stderr.strip()}")
    return seconds


def time_query(path: Path, period: Period, runs: int) -> list[float]:
    """Wall seconds of opening the file and building the report in this process (no start-up, no output)."""
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        connection = open_warehouse(path, read_only=True)
        try:
            build_report(connection, period)
        finally:
            connection.close()
        seconds.append(time.perf_counter() - started)
    return seconds


def summary(seconds: list[float]) -> dict[str, Any]:
    return {
        "runs_s": [round(s, 3) for s in seconds],
        "median_s": round(statistics.median(seconds), 3),
        "max_s": round(max(seconds), 3),
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "?"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")
            ),
            cpu,
        )

    def git(*args: str) -> str:
        command = ["git", *args]
        return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False).stdout.strip()

    # The code measured may not be committed yet: say so, so figures are not pinned on HEAD.
    dirty = bool(git("status", "--porcelain", "--", "services", "bench"))
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        # Taken just after the timed runs: other work on the box slows a short command as much as
        # it takes of the CPUs, so the figures need it beside them.
        "load_average_1m": round(os.getloadavg()[0], 2),
        "commit": git("rev-parse", "--short", "HEAD") + ("+uncommitted changes" if dirty else ""),
        "command": " ".join(["uv run python bench/report.py", *sys.argv[1:]]),
    }


def markdown(result: dict[str, Any]) -> str:
    data = result["data"]
    meta = result["meta"]
    lines = [
        f"# zapflow report benchmark ({meta['date']}, commit {meta['commit']}, load {meta['load_average_1m']})",
        "",
        f"{data['messages']:,} messages, {data['turns']:,} turns, {data['sessions']:,} sessions, "
        f"{data['tenants']} tenants, {data['days']} days ({data['since']} to {data['until']}); "
        f"file {data['file_mib']} MiB, generated in {data['generate_s']} s",
        "",
        "| command | runs | median (s) | max (s) |",
        "|---|---|---|---|",
    ]
    for name, figures in result["timings"].items():
        lines.append(f"| {name} | {len(figures['runs_s'])} | {figures['median_s']} | {figures['max_s']} |")
    verdict = "PASS" if result["pass"] else "FAIL"
    lines += ["", f"target: median `zapflow report` run (table, csv, json) under {TARGET_S} s: **{verdict}**"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--tenants", type=int, default=5, choices=range(1, len(TENANT_NAMES) + 1))
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per format (default 5)")
    parser.add_argument(
        "--path", type=Path, help="write the analytics file here and keep it (default: a temporary dir)"
    )
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "report.json")
    args = parser.parse_args(argv)
    if args.messages <= 0 or args.days <= 0 or args.runs <= 0:
        parser.error("--messages, --days and --runs must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    zapflow = shutil.which("zapflow", path=str(Path(sys.executable).parent))
    if zapflow is None:
        print("error: no zapflow command next to this Python; run `uv run python bench/report.py`", file=sys.stderr)
        return 2
    if args.path is not None and args.path.exists():
        print(f"error: {args.path} exists; the bench writes a new file", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="zapflow-bench-report-"))
    path = args.path or workdir / "analytics.duckdb"
    try:
        # Yesterday is the last day, so the file holds only finished days.
        last_day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
        period = Period(last_day - dt.timedelta(days=args.days - 1), last_day)
        started = time.perf_counter()
        counts = generate(path, messages=args.messages, tenants=args.tenants, days=args.days, last_day=last_day)
        generate_s = time.perf_counter() - started
        report = [
            zapflow,
            "report",
            "--analytics",
            str(path),
            "--since",
            str(period.since),
            "--until",
            str(period.until),
        ]
        timings = {
            f"zapflow report --format {output_format}": summary(
                time_command([*report, "--format", output_format], args.runs)
            )
            for output_format in TIMED_FORMATS
        }
        timings["zapflow report --format csv --plot (information)"] = summary(
            time_command([*report, "--format", "csv", "--plot", str(workdir / "report.png")], args.runs)
        )
        timings["query only, in process (information)"] = summary(time_query(path, period, args.runs))
        result = {
            "meta": machine(),
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "data": {
                **counts,
                "tenants": args.tenants,
                "days": args.days,
                "since": str(period.since),
                "until": str(period.until),
                "file_mib": round(path.stat().st_size / 2**20, 1),
                "generate_s": round(generate_s, 2),
            },
            "timings": timings,
            "target_s": TARGET_S,
        }
        # The median, not the max, is held to the target: on a shared box one run in several can
        # lose its CPU to other work for a while; the max is printed beside it.
        result["pass"] = all(
            timings[f"zapflow report --format {output_format}"]["median_s"] < TARGET_S
            for output_format in TIMED_FORMATS
        )
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(markdown(result))
        print(f"JSON report: {args.json}")
        return 0 if result["pass"] else 1
    except CommandFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
