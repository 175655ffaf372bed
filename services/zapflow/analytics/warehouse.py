"""The DuckDB analytics file: its tables and how to open it.

The warehouse holds figures, not conversations: no message text and no phone number. A contact
is a per-tenant pseudonym (`pseudonym.py`), so the file can be copied to an analyst's laptop
and an erasure only has to unlink rows, never to find words.

Times are UTC (TIMESTAMP without zone); a report's day is the UTC date.
DuckDB lets one process open a file for writing at a time, so writers (the scheduler's jobs,
an erasure) and readers (`zapflow report`) open it only for as long as one job runs and retry
while another process holds it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import duckdb

# One row per archived session (a closed conversation).
SESSIONS_DDL = """
CREATE TABLE IF NOT EXISTS sessions (
    tenant        VARCHAR   NOT NULL,
    session_id    BIGINT    NOT NULL,  -- conversations.id in the relational store
    contact_key   VARCHAR   NOT NULL,  -- the contact's per-tenant pseudonym
    opened_at     TIMESTAMP NOT NULL,
    closed_at     TIMESTAMP NOT NULL,
    messages_in   INTEGER   NOT NULL,
    messages_out  INTEGER   NOT NULL,
    turns         INTEGER   NOT NULL,
    handed_off    BOOLEAN   NOT NULL,  -- a handoff was requested, or a turn ended in one
    archived_at   TIMESTAMP NOT NULL
)
"""

# Every message of an archived session: direction, type and delivery, never the content.
MESSAGES_DDL = """
CREATE TABLE IF NOT EXISTS messages (
    tenant        VARCHAR   NOT NULL,
    session_id    BIGINT    NOT NULL,
    message_id    BIGINT    NOT NULL,  -- messages.id in the relational store
    contact_key   VARCHAR   NOT NULL,
    direction     VARCHAR   NOT NULL,  -- inbound | outbound
    type          VARCHAR,             -- Meta's type: text, interactive, template, ...
    turn_id       VARCHAR,
    created_at    TIMESTAMP NOT NULL,
    status        VARCHAR,             -- outbound: sent | delivered | read | failed
    sent_at       TIMESTAMP,
    delivered_at  TIMESTAMP,
    read_at       TIMESTAMP,
    failed_at     TIMESTAMP,
    error_code    INTEGER
)
"""

# Every turn of an archived session: who answered, how, how fast and at what cost.
TURNS_DDL = """
CREATE TABLE IF NOT EXISTS turns (
    tenant            VARCHAR   NOT NULL,
    session_id        BIGINT    NOT NULL,
    turn_id           VARCHAR   NOT NULL,
    contact_key       VARCHAR   NOT NULL,
    responder         VARCHAR   NOT NULL,  -- rules | openai | ...
    outcome           VARCHAR   NOT NULL,  -- rule | greeting | fallback | llm | faq | error_fallback | silent | handoff
    rule              VARCHAR,             -- the rule or intent that answered
    latency_ms        INTEGER,             -- from the debounce closing the turn to the answer
    prompt_tokens     INTEGER   NOT NULL,
    completion_tokens INTEGER   NOT NULL,
    message_count     INTEGER   NOT NULL,
    created_at        TIMESTAMP NOT NULL,
    answered_at       TIMESTAMP
)
"""

TABLES = ("sessions", "messages", "turns")
SCHEMA = (SESSIONS_DDL, MESSAGES_DDL, TURNS_DDL)

# How long to wait for another process (a job, a report) to let go of the file.
LOCK_WAIT_S = 30.0


class WarehouseError(Exception):
    """The analytics file cannot be opened or read; the message says why."""


def open_warehouse(path: Path, *, read_only: bool = False, wait_s: float = LOCK_WAIT_S) -> duckdb.DuckDBPyConnection:
    """Open the analytics file, creating it and its tables when writing.

    Retries while another process holds the file; the caller closes the connection.
    """
    if read_only and not path.exists():
        raise WarehouseError(f"no analytics file at {path}: the scheduler creates it when it archives sessions")
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        try:
            connection = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as error:
            # Another process has the file open for writing: DuckDB's lock is per process.
            if "lock" not in str(error).lower() or time.monotonic() >= deadline:
                raise WarehouseError(f"cannot open {path}: {error}") from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    if not read_only:
        for ddl in SCHEMA:
            connection.execute(ddl)
    return connection


@contextmanager
def transaction(connection: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All of the block's statements or none of them."""
    connection.begin()
    try:
        yield connection
    except BaseException:
        connection.rollback()
        raise
    connection.commit()


def changed_rows(result: duckdb.DuckDBPyConnection) -> int:
    """The row count an INSERT, UPDATE or DELETE returns."""
    row = result.fetchone()
    return int(row[0]) if row else 0


def delete_sessions_opened_before(connection: duckdb.DuckDBPyConnection, tenant: str, cutoff: datetime) -> int:
    """Delete a tenant's sessions opened before `cutoff` (naive UTC) with their rows; rows deleted."""
    expired = "SELECT session_id FROM sessions WHERE tenant = $tenant AND opened_at < $cutoff"
    deleted = 0
    with transaction(connection):
        # Sessions last: the others find their rows through them.
        for table in ("messages", "turns", "sessions"):
            deleted += changed_rows(
                connection.execute(
                    f"DELETE FROM {table} WHERE tenant = $tenant AND session_id IN ({expired})",  # noqa: S608
                    {"tenant": tenant, "cutoff": cutoff},
                )
            )
    return deleted
