"""The report benchmark's generated analytics file is consistent (a small one; nothing is timed)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from bench.report import generate
from zapflow.analytics.report import Period, build_report
from zapflow.analytics.warehouse import open_warehouse

LAST_DAY = dt.date(2026, 3, 31)
MESSAGES = 10_000

# Each query counts the rows that break one promise of the data; all must be 0.
BROKEN = {
    "message without its session (same tenant and contact)": """
        SELECT count(*) FROM messages m
        ANTI JOIN sessions s ON s.tenant = m.tenant AND s.session_id = m.session_id AND s.contact_key = m.contact_key
    """,
    "turn without its session": """
        SELECT count(*) FROM turns t
        ANTI JOIN sessions s ON s.tenant = t.tenant AND s.session_id = t.session_id AND s.contact_key = t.contact_key
    """,
    "message whose turn is not in its session": """
        SELECT count(*) FROM messages m
        ANTI JOIN turns t ON t.session_id = m.session_id AND t.turn_id = m.turn_id
    """,
    "session without turns": "SELECT count(*) FROM sessions s ANTI JOIN turns t USING (session_id)",
    "duplicate message id": "SELECT count(*) - count(DISTINCT message_id) FROM messages",
    "duplicate session id": "SELECT count(*) - count(DISTINCT session_id) FROM sessions",
    "duplicate turn id": "SELECT count(*) - count(DISTINCT turn_id) FROM turns",
    "session totals that differ from its rows": """
        SELECT count(*) FROM sessions s
        JOIN (SELECT session_id, count(*) FILTER (direction = 'inbound') AS messages_in,
                     count(*) FILTER (direction = 'outbound') AS messages_out
              FROM messages GROUP BY ALL) m USING (session_id)
        JOIN (SELECT session_id, count(*) AS turns, bool_or(outcome = 'handoff') AS handoff FROM turns GROUP BY ALL) t
            USING (session_id)
        WHERE s.messages_in != m.messages_in OR s.messages_out != m.messages_out OR s.turns != t.turns
              OR (t.handoff AND NOT s.handed_off)
    """,
    "turn message count that differs from its inbound messages": """
        SELECT count(*) FROM turns t
        JOIN (SELECT turn_id, count(*) AS inbound FROM messages WHERE direction = 'inbound' GROUP BY ALL) m
            USING (turn_id)
        WHERE t.message_count != m.inbound
    """,
    "message outside its session's time": """
        SELECT count(*) FROM messages m JOIN sessions s USING (session_id)
        WHERE m.created_at < s.opened_at OR m.created_at > s.closed_at OR s.archived_at < s.closed_at
    """,
    "inbound message with a delivery status": """
        SELECT count(*) FROM messages WHERE direction = 'inbound'
            AND (status IS NOT NULL OR sent_at IS NOT NULL OR delivered_at IS NOT NULL OR read_at IS NOT NULL)
    """,
    "outbound status without its receipts, or receipts out of order": """
        SELECT count(*) FROM messages WHERE direction = 'outbound' AND NOT coalesce(CASE status
            WHEN 'failed' THEN failed_at IS NOT NULL AND error_code IS NOT NULL AND delivered_at IS NULL
            WHEN 'sent' THEN sent_at IS NOT NULL AND delivered_at IS NULL AND read_at IS NULL
            WHEN 'delivered' THEN sent_at < delivered_at AND read_at IS NULL
            WHEN 'read' THEN sent_at < delivered_at AND delivered_at < read_at
        END, false)
    """,
    "turn answered before it closed, or a silent turn with an answer": """
        SELECT count(*) FROM turns
        WHERE answered_at < created_at OR (outcome = 'silent') != (latency_ms IS NULL)
    """,
    "rule on a turn no rule or intent answered": """
        SELECT count(*) FROM turns WHERE (rule IS NOT NULL) != (outcome IN ('rule', 'llm'))
    """,
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "analytics.duckdb"
    counts = generate(path, messages=MESSAGES, tenants=5, days=90, last_day=LAST_DAY)
    assert counts["messages"] == MESSAGES
    return path


@pytest.mark.parametrize("promise", BROKEN)
def test_generated_data_keeps_its_promises(generated: Path, promise: str) -> None:
    connection = open_warehouse(generated, read_only=True)
    try:
        assert connection.execute(BROKEN[promise]).fetchone() == (0,)
    finally:
        connection.close()


def test_generated_data_spans_the_tenants_and_days(generated: Path) -> None:
    connection = open_warehouse(generated, read_only=True)
    try:
        tenants, first, last = connection.execute(
            "SELECT count(DISTINCT tenant), min(opened_at)::DATE, max(opened_at)::DATE FROM sessions"
        ).fetchall()[0]
        assert (tenants, first, last) == (5, dt.date(2026, 1, 1), LAST_DAY)
        responders = dict(
            connection.execute("SELECT responder, count(DISTINCT tenant) FROM turns GROUP BY ALL").fetchall()
        )
        assert responders == {"rules": 4, "openai": 1}
        statuses = {status for (status,) in connection.execute("SELECT DISTINCT status FROM messages").fetchall()}
        assert statuses == {None, "sent", "delivered", "read", "failed"}
        rows = build_report(connection, Period(dt.date(2026, 1, 1), dt.date(2026, 4, 1)))
    finally:
        connection.close()
    assert sum(row.messages_in + row.messages_out for row in rows) == MESSAGES
