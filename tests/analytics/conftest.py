"""A small analytics file written row by row, whose report figures the tests state by hand.

Two tenants over 2026-03-01..03-03, plus rows just outside that period (02-28 and 03-04) that a
report of those three days must leave out:

- acme 03-01: sessions 1 and 2 opened (2 handed off: 1 of 2); 4 messages in, 4 out (delivered
  or read: 3, one of them read without a delivered receipt; read: 2; one failed); 9 turns, 7 of
  them with a latency (50, 100, 200, 300, 400, 600, 1000 ms), 2 fallbacks (fallback,
  error_fallback); rules prices 2, menu 2, hours 1, zebra 1.
- acme 03-02: session 3 opened; 3 in, 2 out (1 delivered, 1 only sent); turns of 120 (handoff)
  and 80 ms (prices).
- acme 03-03: one message in, no session opened, no turn.
- bolt 03-01: nothing. bolt 03-02: session 101 (handed off), 1 in, 1 out read, a handoff turn of
  40 ms. bolt 03-03: session 102, 2 in, 1 out failed, a fallback turn of 70 ms and a prices
  turn without a latency.
- outside: acme session 4 opened 02-28 23:00 with a message and a prices turn (5 ms) that day
  (its reply at 03-01 00:10 and a turn at 00:09 belong to 03-01); acme session 5 on 03-04.

Handoffs (seconds from the request to an agent, to the first agent message, to resolved):
- acme 03-01: customer_asked 60 / 120 / 1080 (asked at 23:52, resolved the next day: it counts on
  03-01), llm 30 / 300 / 600, customer_asked never given to an agent and timed out at 1800.
- bolt 03-02: agent_took 0 / 20 / 100.
- outside: acme rule 02-28 23:10 (10 / 40 / 400), acme customer_asked 03-04.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from zapflow.analytics.warehouse import open_warehouse

# The report counts message and turn rows, never the per-session totals, so those stay 0 here.
CLOSED_AT = "2026-03-05 00:00:00"


def session(tenant: str, session_id: int, opened_at: str, handed_off: bool) -> tuple[object, ...]:
    return (tenant, session_id, f"contact-{session_id}", opened_at, CLOSED_AT, 0, 0, 0, handed_off, CLOSED_AT)


def inbound(tenant: str, session_id: int, message_id: int, at: str) -> tuple[object, ...]:
    return (tenant, session_id, message_id, f"contact-{session_id}", "inbound", "text", None, at) + (None,) * 6


def outbound(
    tenant: str,
    session_id: int,
    message_id: int,
    at: str,
    status: str,
    *,
    delivered_at: str | None = None,
    read_at: str | None = None,
    failed_at: str | None = None,
) -> tuple[object, ...]:
    sent_at = None if status == "failed" else at
    error_code = 131047 if failed_at else None
    contact = f"contact-{session_id}"
    return (
        tenant,
        session_id,
        message_id,
        contact,
        "outbound",
        "text",
        None,
        at,
        status,
        sent_at,
        delivered_at,
        read_at,
        failed_at,
        error_code,
    )


def turn(
    tenant: str, session_id: int, turn_id: str, at: str, outcome: str, rule: str | None, latency_ms: int | None
) -> tuple[object, ...]:
    return (tenant, session_id, turn_id, f"contact-{session_id}", "rules", outcome, rule, latency_ms, 0, 0, 1, at, at)


def handoff(
    tenant: str,
    handoff_id: int,
    session_id: int | None,
    reason: str,
    requested_at: str,
    to_agent_s: float | None,
    first_reply_s: float | None,
    resolve_s: float,
) -> tuple[object, ...]:
    asked = dt.datetime.fromisoformat(requested_at)

    def after(seconds: float | None) -> dt.datetime | None:
        return None if seconds is None else asked + dt.timedelta(seconds=seconds)

    resolution = "agent" if first_reply_s is not None else "timeout"
    contact = f"contact-{session_id}"
    times = (asked, after(to_agent_s), after(first_reply_s), after(resolve_s))
    seconds = (to_agent_s, first_reply_s, resolve_s)
    return (tenant, handoff_id, session_id, contact, reason, 0, ["billing"], *times, resolution, *seconds, CLOSED_AT)


SESSIONS = [
    session("acme", 4, "2026-02-28 23:00:00", True),
    session("acme", 1, "2026-03-01 09:00:00", False),
    session("acme", 2, "2026-03-01 23:50:00", True),
    session("acme", 3, "2026-03-02 10:00:00", False),
    session("acme", 5, "2026-03-04 08:00:00", False),
    session("bolt", 101, "2026-03-02 12:00:00", True),
    session("bolt", 102, "2026-03-03 08:00:00", False),
]

MESSAGES = [
    inbound("acme", 4, 1, "2026-02-28 23:00:00"),
    outbound("acme", 4, 2, "2026-03-01 00:10:00", "read", read_at="2026-03-01 00:12:00"),
    inbound("acme", 1, 3, "2026-03-01 09:00:00"),
    inbound("acme", 1, 4, "2026-03-01 09:01:00"),
    outbound(
        "acme", 1, 5, "2026-03-01 09:01:05", "read", delivered_at="2026-03-01 09:01:07", read_at="2026-03-01 09:02:00"
    ),
    inbound("acme", 1, 6, "2026-03-01 09:05:00"),
    outbound("acme", 1, 7, "2026-03-01 09:05:03", "delivered", delivered_at="2026-03-01 09:05:06"),
    inbound("acme", 2, 8, "2026-03-01 23:50:00"),
    outbound("acme", 2, 9, "2026-03-01 23:51:00", "failed", failed_at="2026-03-01 23:51:01"),
    inbound("acme", 2, 10, "2026-03-02 00:05:00"),
    outbound("acme", 2, 11, "2026-03-02 00:06:00", "sent"),
    inbound("acme", 3, 12, "2026-03-02 10:00:00"),
    inbound("acme", 3, 13, "2026-03-02 10:00:02"),
    outbound("acme", 3, 14, "2026-03-02 10:00:05", "delivered", delivered_at="2026-03-02 10:00:09"),
    inbound("acme", 3, 15, "2026-03-03 09:00:00"),
    inbound("acme", 5, 16, "2026-03-04 08:00:00"),
    outbound(
        "acme", 5, 17, "2026-03-04 08:00:03", "read", delivered_at="2026-03-04 08:00:04", read_at="2026-03-04 08:01:00"
    ),
    inbound("bolt", 101, 101, "2026-03-02 12:00:00"),
    outbound(
        "bolt",
        101,
        102,
        "2026-03-02 12:00:02",
        "read",
        delivered_at="2026-03-02 12:00:03",
        read_at="2026-03-02 12:01:00",
    ),
    inbound("bolt", 102, 103, "2026-03-03 08:00:00"),
    inbound("bolt", 102, 104, "2026-03-03 08:00:02"),
    outbound("bolt", 102, 105, "2026-03-03 08:00:05", "failed", failed_at="2026-03-03 08:00:06"),
]

TURNS = [
    turn("acme", 4, "a0", "2026-02-28 23:00:02", "rule", "prices", 5),
    turn("acme", 4, "a4", "2026-03-01 00:09:00", "rule", "menu", 400),
    turn("acme", 1, "a9", "2026-03-01 09:00:01", "greeting", None, 50),
    turn("acme", 1, "a1", "2026-03-01 09:00:05", "rule", "prices", 100),
    turn("acme", 1, "a2", "2026-03-01 09:05:02", "rule", "prices", 200),
    turn("acme", 1, "a5", "2026-03-01 10:00:00", "rule", "zebra", 1000),
    turn("acme", 1, "a6", "2026-03-01 10:10:00", "rule", "hours", None),
    turn("acme", 1, "a7", "2026-03-01 10:20:00", "fallback", None, 600),
    turn("acme", 2, "a3", "2026-03-01 23:50:03", "rule", "menu", 300),
    turn("acme", 2, "a8", "2026-03-01 23:55:00", "error_fallback", None, None),
    turn("acme", 2, "b1", "2026-03-02 00:05:02", "handoff", None, 120),
    turn("acme", 3, "b2", "2026-03-02 10:00:04", "rule", "prices", 80),
    turn("acme", 5, "e1", "2026-03-04 08:00:02", "fallback", None, 30),
    turn("bolt", 101, "c1", "2026-03-02 12:00:01", "handoff", None, 40),
    turn("bolt", 102, "c2", "2026-03-03 08:00:04", "fallback", None, 70),
    turn("bolt", 102, "c3", "2026-03-03 08:30:00", "rule", "prices", None),
]


HANDOFFS = [
    handoff("acme", 40, 4, "rule", "2026-02-28 23:10:00", 10, 40, 400),
    handoff("acme", 1, 2, "customer_asked", "2026-03-01 23:52:00", 60, 120, 1080),
    handoff("acme", 2, 1, "llm", "2026-03-01 09:05:00", 30, 300, 600),
    handoff("acme", 3, 1, "customer_asked", "2026-03-01 10:30:00", None, None, 1800),
    handoff("acme", 50, 5, "customer_asked", "2026-03-04 08:01:00", 5, 10, 50),
    handoff("bolt", 101, 101, "agent_took", "2026-03-02 12:00:30", 0, 20, 100),
]


@pytest.fixture(scope="session")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The analytics file above; reports only read it, so the tests share one."""
    path = tmp_path_factory.mktemp("analytics") / "analytics.duckdb"
    connection = open_warehouse(path)
    try:
        for table, rows in (("sessions", SESSIONS), ("messages", MESSAGES), ("turns", TURNS), ("handoffs", HANDOFFS)):
            placeholders = ", ".join("?" * len(rows[0]))
            connection.executemany(f"INSERT INTO {table} VALUES ({placeholders})", rows)  # noqa: S608 - our tables
    finally:
        connection.close()
    return path
