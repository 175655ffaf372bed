"""The DuckDB analytics file: its tables and how to open it.

The warehouse holds figures, not conversations: no message text and no phone number. A contact
is a per-tenant pseudonym (`pseudonym.py`), so the file can be copied to an analyst's laptop
and an erasure only has to unlink rows, never to find words.

Times are UTC (TIMESTAMP without zone); a report's day is the UTC date.
Tables are created by whoever opens the file for writing (`CREATE TABLE IF NOT EXISTS`), so a
file from an older zapflow gains the newer tables at the scheduler's next job; a reader of such a
file sees empty ones in their place (`readable`).
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

# Every resolved handoff: why, how fast a person came and answered, how it ended. Neither the
# agent nor any text (the customer's name, the reason's detail, notes): figures and the tenant's
# own vocabulary (reasons, labels) only.
HANDOFFS_DDL = """
CREATE TABLE IF NOT EXISTS handoffs (
    tenant          VARCHAR   NOT NULL,
    handoff_id      BIGINT    NOT NULL,  -- handoffs.id in the relational store
    session_id      BIGINT,              -- the conversation it happened in, when the store knew it
    contact_key     VARCHAR   NOT NULL,
    reason          VARCHAR   NOT NULL,  -- customer_asked | rule | llm | faq_misses | responder_failures | agent_took
    priority        INTEGER   NOT NULL,
    labels          VARCHAR[] NOT NULL,  -- of the tenant's handoff labels
    requested_at    TIMESTAMP NOT NULL,
    assigned_at     TIMESTAMP,           -- the first time an agent had it
    first_reply_at  TIMESTAMP,           -- the first agent message
    resolved_at     TIMESTAMP NOT NULL,
    resolution      VARCHAR,             -- agent | timeout | ...
    wait_s          DOUBLE,              -- requested -> first assigned
    first_reply_s   DOUBLE,              -- requested -> first agent message
    resolve_s       DOUBLE    NOT NULL,  -- requested -> resolved
    archived_at     TIMESTAMP NOT NULL
)
"""

# Every campaign, as figures: what it sent and how far its recipients got, never who they are
# (no phone number, no template parameter). Copied again at every archival while receipts can
# still change it (archive.py), so the counts are as of `archived_at`.
CAMPAIGNS_DDL = """
CREATE TABLE IF NOT EXISTS campaigns (
    tenant             VARCHAR   NOT NULL,
    campaign_id        VARCHAR   NOT NULL,  -- campaigns.id in the relational store
    name               VARCHAR   NOT NULL,
    template_name      VARCHAR   NOT NULL,
    template_language  VARCHAR   NOT NULL,
    template_category  VARCHAR   NOT NULL,  -- marketing | utility | authentication
    status             VARCHAR   NOT NULL,  -- scheduled | running | waiting | done | cancelled | failed
    reason             VARCHAR,             -- why it waits or failed, as the tenant is told
    created_at         TIMESTAMP NOT NULL,
    start_at           TIMESTAMP NOT NULL,
    updated_at         TIMESTAMP NOT NULL,
    recipients         INTEGER   NOT NULL,
    -- Recipients by state: a column per state of the store's RECIPIENT_STATES, spelt out rather
    -- than imported, which would load SQLAlchemy into `zapflow report` (a test keeps them equal).
    queued             INTEGER   NOT NULL,
    sending            INTEGER   NOT NULL,
    sent               INTEGER   NOT NULL,
    delivered          INTEGER   NOT NULL,
    read               INTEGER   NOT NULL,
    failed             INTEGER   NOT NULL,
    skipped            INTEGER   NOT NULL,
    archived_at        TIMESTAMP NOT NULL
)
"""

# A campaign's failed and skipped recipients grouped by why, as `zapflow campaign show` groups them.
CAMPAIGN_OUTCOMES_DDL = """
CREATE TABLE IF NOT EXISTS campaign_outcomes (
    tenant       VARCHAR NOT NULL,
    campaign_id  VARCHAR NOT NULL,
    status       VARCHAR NOT NULL,  -- failed | skipped
    reason       VARCHAR,           -- opted_out, marketing_stopped, window_closed, cancelled, ...
    error_code   INTEGER,           -- Meta's, when it refused the message: 131050, 131026, ...
    count        INTEGER NOT NULL
)
"""

# How far the incremental archives (handoffs: there is no archived mark in SQL to set) have got.
ARCHIVE_PROGRESS_DDL = """
CREATE TABLE IF NOT EXISTS archive_progress (
    source       VARCHAR   PRIMARY KEY,  -- handoffs
    archived_to  TIMESTAMP NOT NULL      -- the latest resolved_at copied
)
"""

# The rows of a session, replaced together when the session is archived again.
SESSION_TABLES = ("sessions", "messages", "turns")
# The rows of a campaign, replaced together at each copy.
CAMPAIGN_TABLES = ("campaigns", "campaign_outcomes")
# Every table with a contact_key: what an erasure anonymises. Not the campaign tables: they count
# recipients and name no one, so an erasure has nothing to unlink there.
TABLES = (*SESSION_TABLES, "handoffs")
SCHEMA = (
    SESSIONS_DDL,
    MESSAGES_DDL,
    TURNS_DDL,
    HANDOFFS_DDL,
    CAMPAIGNS_DDL,
    CAMPAIGN_OUTCOMES_DDL,
    ARCHIVE_PROGRESS_DDL,
)
# Tables added after the first release: a file written before them lacks them until a writer
# opens it, so a reader is given an empty stand-in instead of an error (`readable`).
LATER_TABLES = {"handoffs": HANDOFFS_DDL, "campaigns": CAMPAIGNS_DDL, "campaign_outcomes": CAMPAIGN_OUTCOMES_DDL}

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


def readable(connection: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A read-only connection that sees every table: empty temporary ones stand in for those the file predates."""
    stored = connection.execute("SELECT table_name FROM duckdb_tables() WHERE NOT temporary").fetchall()
    present = {row[0] for row in stored}
    for table, ddl in LATER_TABLES.items():
        if table not in present:
            connection.execute(ddl.replace("CREATE TABLE", "CREATE TEMP TABLE", 1))
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


def delete_figures_before(connection: duckdb.DuckDBPyConnection, tenant: str, cutoff: datetime) -> int:
    """Delete a tenant's sessions opened, handoffs requested and campaigns created before `cutoff` (naive UTC)."""
    params = {"tenant": tenant, "cutoff": cutoff}
    expired_sessions = "SELECT session_id FROM sessions WHERE tenant = $tenant AND opened_at < $cutoff"
    expired_campaigns = "SELECT campaign_id FROM campaigns WHERE tenant = $tenant AND created_at < $cutoff"
    # The table that dates a row set last: the others find their rows through it.
    expiring = (
        ("messages", "session_id", expired_sessions),
        ("turns", "session_id", expired_sessions),
        ("sessions", "session_id", expired_sessions),
        ("campaign_outcomes", "campaign_id", expired_campaigns),
        ("campaigns", "campaign_id", expired_campaigns),
    )
    deleted = 0
    with transaction(connection):
        for table, key, expired in expiring:
            deleted += changed_rows(
                connection.execute(
                    f"DELETE FROM {table} WHERE tenant = $tenant AND {key} IN ({expired})",  # noqa: S608
                    params,
                )
            )
        # On their own clock: a handoff may belong to no archived session.
        deleted += changed_rows(
            connection.execute("DELETE FROM handoffs WHERE tenant = $tenant AND requested_at < $cutoff", params)
        )
    return deleted
