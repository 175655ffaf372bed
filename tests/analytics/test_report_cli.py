"""`zapflow report` as a person runs it, over the hand-made file of conftest.py."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from matplotlib.image import imread

from tests.support.cli import cli_environment, run_zapflow
from zapflow.analytics.warehouse import open_warehouse
from zapflow.platform.stackfile import StackAddresses, record

THREE_DAYS = ("--since", "2026-03-01", "--until", "2026-03-03")


def zapflow_report(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # rich wraps what it prints at the terminal's width (80 columns without a terminal): a wide
    # one lets the tests see each table row and each message as the one line it is.
    return run_zapflow({**os.environ, "COLUMNS": "1000", **env}, "report", *args)


def test_csv(warehouse: Path) -> None:
    result = zapflow_report("--analytics", str(warehouse), *THREE_DAYS, "--tenant", "bolt", "--format", "csv")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "tenant,day,conversations,messages_in,messages_out,turns,response_p50_ms,response_p95_ms,"
        "fallback_rate,handoff_rate,delivery_rate,read_rate,top_rules,"
        "handoffs,handoff_reasons,handoff_to_agent_p50_s,handoff_first_reply_p50_s,handoff_resolve_p50_s,"
        "handoffs_unanswered\n"
        "bolt,2026-03-01,0,0,0,0,,,,,,,,0,,,,,0\n"
        "bolt,2026-03-02,1,1,1,1,40.0,40.0,0.0,1.0,1.0,1.0,,1,agent_took:1,0.0,20.0,100.0,0\n"
        "bolt,2026-03-03,1,2,1,2,70.0,70.0,0.5,0.0,0.0,0.0,prices:1,0,,,,,0\n"
    )


def test_json(warehouse: Path) -> None:
    result = zapflow_report("--analytics", str(warehouse), *THREE_DAYS, "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(row["tenant"], row["day"]) for row in rows] == [
        ("acme", "2026-03-01"),
        ("acme", "2026-03-02"),
        ("acme", "2026-03-03"),
        ("bolt", "2026-03-01"),
        ("bolt", "2026-03-02"),
        ("bolt", "2026-03-03"),
    ]
    assert rows[0] == {
        "tenant": "acme",
        "day": "2026-03-01",
        "conversations": 2,
        "messages_in": 4,
        "messages_out": 4,
        "turns": 9,
        "response_p50_ms": 300.0,
        "response_p95_ms": 880.0,
        "fallback_rate": 2 / 9,
        "handoff_rate": 0.5,
        "delivery_rate": 0.75,
        "read_rate": 0.5,
        "top_rules": [{"rule": "menu", "count": 2}, {"rule": "prices", "count": 2}, {"rule": "hours", "count": 1}],
        "handoffs": 3,
        "handoff_reasons": [{"reason": "customer_asked", "count": 2}, {"reason": "llm", "count": 1}],
        "handoff_to_agent_p50_s": 45.0,
        "handoff_first_reply_p50_s": 210.0,
        "handoff_resolve_p50_s": 1080.0,
        "handoffs_unanswered": 1,
    }
    assert rows[2] == {
        "tenant": "acme",
        "day": "2026-03-03",
        "conversations": 0,
        "messages_in": 1,
        "messages_out": 0,
        "turns": 0,
        "response_p50_ms": None,
        "response_p95_ms": None,
        "fallback_rate": None,
        "handoff_rate": None,
        "delivery_rate": None,
        "read_rate": None,
        "top_rules": [],
        "handoffs": 0,
        "handoff_reasons": [],
        "handoff_to_agent_p50_s": None,
        "handoff_first_reply_p50_s": None,
        "handoff_resolve_p50_s": None,
        "handoffs_unanswered": 0,
    }


def test_table_is_the_default_and_the_path_comes_from_the_environment(warehouse: Path) -> None:
    result = zapflow_report(*THREE_DAYS, ZAPFLOW_ANALYTICS_PATH=str(warehouse))
    assert result.returncode == 0, result.stderr
    acme_march_1 = next(line for line in result.stdout.splitlines() if "acme" in line and "2026-03-01" in line)
    cells = [cell.strip() for cell in acme_march_1.strip("│ ").split("│")]
    assert cells == ["acme", "2026-03-01", "2", "4", "4", "9", "300", "880", "22.2%", "50.0%", "75.0%", "50.0%",
                     "menu 2, prices 2, hours 1"]  # fmt: skip
    bolt_march_1 = next(line for line in result.stdout.splitlines() if "bolt" in line and "2026-03-01" in line)
    assert [cell.strip() for cell in bolt_march_1.strip("│ ").split("│")][2:12] == ["0"] * 4 + ["-"] * 6


def test_the_handoffs_table_lists_the_days_with_handoffs_and_fits_100_columns(warehouse: Path) -> None:
    result = run_zapflow({**os.environ, "COLUMNS": "100"}, "report", "--analytics", str(warehouse), *THREE_DAYS)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100
    handoffs = lines[next(i for i, line in enumerate(lines) if line.strip().startswith("handoffs by the day")) :]
    rows = [[cell.strip() for cell in line.strip()[1:-1].split("│")] for line in handoffs if line.startswith("│")]
    # Each row's cells, a reasons cell that wraps continuing on the next line.
    assert rows == [
        ["acme", "2026-03-01", "3", "45s", "3m30s", "18m00s", "1", "customer_asked 2,"],
        ["", "", "", "", "", "", "", "llm 1"],
        ["bolt", "2026-03-02", "1", "0s", "20s", "1m40s", "0", "agent_took 1"],
    ]


def test_no_data_is_said_not_an_empty_table(warehouse: Path) -> None:
    result = zapflow_report("--analytics", str(warehouse), *THREE_DAYS, "--tenant", "nobody")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no data between 2026-03-01 and 2026-03-03 for nobody"


def test_nothing_archived_yet_is_an_empty_report_that_says_why(tmp_path: Path) -> None:
    analytics = tmp_path / ".zapflow" / "analytics.duckdb"
    # Only the analytics file counts for a report: the stack's servers need not run.
    stack = StackAddresses("nats://127.0.0.1:1", "redis://127.0.0.1:1/0", "sqlite+aiosqlite:///x", str(analytics), "")
    record(tmp_path / ".zapflow", stack)
    why = (
        f"nothing archived yet in {analytics}: the scheduler archives a conversation once it has been idle for its "
        "tenant's sessionIdleMinutes (30 minutes by default)\n"
    )
    using = f"using the zapflow dev stack in .zapflow (analytics {analytics})\n"

    for state in ("no analytics file", "a file without sessions"):
        if state == "a file without sessions":
            open_warehouse(analytics).close()  # the tables, as a writer creates them, and no row
        table = run_zapflow(cli_environment(), "report", cwd=tmp_path)
        assert (table.returncode, table.stdout, table.stderr) == (0, why, using), state
        # A document stays a valid one, empty; the reason goes beside it.
        as_json = run_zapflow(cli_environment(), "report", "--format", "json", cwd=tmp_path)
        assert (as_json.returncode, as_json.stdout, as_json.stderr) == (0, "[]\n", using + why), state
        as_csv = run_zapflow(cli_environment(), "report", "--format", "csv", cwd=tmp_path)
        assert (as_csv.returncode, as_csv.stdout.count("\n"), as_csv.stderr) == (0, 1, using + why), state
        assert as_csv.stdout.startswith("tenant,day,"), state


def test_the_period_defaults_to_30_days(warehouse: Path) -> None:
    result = zapflow_report("--analytics", str(warehouse), "--until", "2026-03-03", "--format", "csv")
    assert result.returncode == 0, result.stderr
    days = [line.split(",")[:2] for line in result.stdout.splitlines()[1:]]
    assert len(days) == 2 * 30
    assert days[0] == ["acme", "2026-02-02"]
    assert days[-1] == ["bolt", "2026-03-03"]


def test_plot_writes_a_png_and_still_prints_the_report(warehouse: Path, tmp_path: Path) -> None:
    path = tmp_path / "report.png"
    result = zapflow_report("--analytics", str(warehouse), *THREE_DAYS, "--format", "csv", "--plot", str(path))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1 + 6
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    height, width, channels = imread(path).shape
    assert (width, height, channels) == (1200, 800, 4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--analytics", "{missing}"), "error: no analytics file at {missing}: the scheduler creates it"),
        (("--analytics", "{not_duckdb}"), "error: cannot open {not_duckdb}: "),
        (("--since", "2026-02-30"), "error: --since: '2026-02-30' is not a date (YYYY-MM-DD)"),
        (("--until", "soon"), "error: --until: 'soon' is not a date (YYYY-MM-DD)"),
        (("--since", "2026-03-03", "--until", "2026-03-01"), "error: --since 2026-03-03 is after --until 2026-03-01"),
        (("--format", "xml"), "error: --format: 'xml' is not one of table, csv, json"),
        (("--plot", "{tmp}/no/such/dir/report.png"), "error: cannot write the plot to {tmp}/no/such/dir/report.png: "),
    ],
    ids=["missing file", "not a duckdb file", "bad since", "bad until", "since after until", "format", "plot path"],
)
def test_bad_input_is_a_one_line_error(warehouse: Path, tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    not_duckdb = tmp_path / "notes.txt"
    not_duckdb.write_text("not a database\n")
    names = {"missing": str(tmp_path / "nothing.duckdb"), "not_duckdb": str(not_duckdb), "tmp": str(tmp_path)}
    filled = [arg.format(**names) for arg in args]
    result = zapflow_report(*(["--analytics", str(warehouse)] if "--analytics" not in filled else []), *filled)
    assert result.returncode == 1
    assert result.stderr.startswith(message.format(**names))
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
