"""Archiving closed sessions into DuckDB: idempotent, all or nothing, pseudonymised; and retention."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.store.conversations import ALICE, BOB, exchange
from tests.store.events import T0, at
from zapflow.analytics import pseudonym
from zapflow.analytics.archive import Archiver
from zapflow.analytics.warehouse import TABLES, open_warehouse
from zapflow.scheduler.jobs import Jobs
from zapflow.store.lifecycle import close_idle_conversations
from zapflow.store.models import Conversation
from zapflow.store.repository import ConversationStore
from zapflow.tenants.model import DataSpec

SECRET = "test-pseudonym-secret"


def rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every warehouse row, sorted, the archival time left out (it differs between runs)."""
    with open_warehouse(path, read_only=True) as warehouse:
        return {
            "sessions": warehouse.execute(
                "SELECT tenant, contact_key, opened_at, closed_at, messages_in, messages_out, turns, handed_off "
                "FROM sessions ORDER BY ALL"
            ).fetchall(),
            "messages": warehouse.execute(
                "SELECT tenant, contact_key, direction, type, turn_id, created_at, status, delivered_at "
                "FROM messages ORDER BY ALL"
            ).fetchall(),
            "turns": warehouse.execute(
                "SELECT tenant, contact_key, turn_id, outcome, rule, latency_ms FROM turns ORDER BY ALL"
            ).fetchall(),
        }


async def closed_sessions(store: ConversationStore, engine: AsyncEngine) -> None:
    """Alice and Bob at acme, Alice at globex, all closed; Bob wrote twice."""
    await exchange(store, "a", 0, contact=ALICE)
    await exchange(store, "b1", 10, contact=BOB)
    await exchange(store, "b2", 20, contact=BOB)
    await exchange(store, "g", 0, tenant="globex", contact=ALICE)
    assert await close_idle_conversations(engine, lambda _: DataSpec(), at(3600)) == 3


def key(tenant: str, contact: str) -> str:
    return pseudonym.contact_pseudonym(SECRET, tenant, contact)


async def test_closed_sessions_are_archived_with_their_figures_and_pseudonyms(
    store: ConversationStore, engine: AsyncEngine, tmp_path: Path
) -> None:
    await closed_sessions(store, engine)
    warehouse = tmp_path / "analytics.duckdb"

    assert await Archiver(engine, warehouse, SECRET).archive_closed() == 3

    archived = rows(warehouse)
    naive = at(0).replace(tzinfo=None)
    assert archived["sessions"] == sorted(
        [
            ("acme", key("acme", ALICE), naive, naive + timedelta(seconds=2), 1, 1, 1, False),
            ("acme", key("acme", BOB), naive + timedelta(seconds=10), naive + timedelta(seconds=22), 2, 2, 2, False),
            ("globex", key("globex", ALICE), naive, naive + timedelta(seconds=2), 1, 1, 1, False),
        ]
    )
    assert len(archived["messages"]) == 8
    assert ("acme", key("acme", ALICE), "outbound", "text", "turn-a", naive + timedelta(seconds=2), "delivered",
            naive + timedelta(seconds=4)) in archived["messages"]  # fmt: skip
    assert ("acme", key("acme", ALICE), "turn-a", "rule", "prices", 250) in archived["turns"]
    # One customer, two tenants: two pseudonyms that cannot be joined.
    assert key("acme", ALICE) != key("globex", ALICE)
    contents = warehouse.read_bytes()
    for personal in (ALICE.encode(), BOB.encode(), b"hello a", b"answer a"):
        assert personal not in contents


async def test_archiving_again_gives_the_same_rows(
    store: ConversationStore, engine: AsyncEngine, tmp_path: Path
) -> None:
    await closed_sessions(store, engine)
    warehouse = tmp_path / "analytics.duckdb"
    archiver = Archiver(engine, warehouse, SECRET)
    await archiver.archive_closed()
    first = rows(warehouse)
    async with engine.begin() as conn:  # as if the job died after DuckDB's commit, before SQL's
        await conn.execute(Conversation.__table__.update().values(archived_at=None))

    assert await archiver.archive_closed() == 3
    assert await archiver.archive_closed() == 0
    assert rows(warehouse) == first


KILLED_ARCHIVER = """
import asyncio, sys
from pathlib import Path
from zapflow.analytics import archive
from zapflow.store.engine import create_engine

insert_columns = archive._insert_columns

def insert_then_hang(warehouse, table, columns):
    insert_columns(warehouse, table, columns)
    if table == "messages":  # sessions and messages written, turns not yet, nothing committed
        print("inserted", flush=True)
        sys.stdin.read()

archive._insert_columns = insert_then_hang
asyncio.run(archive.Archiver(create_engine(sys.argv[1]), Path(sys.argv[2]), "s").archive_closed())
"""


async def test_an_archiver_killed_half_way_leaves_nothing_half_written(
    store: ConversationStore, engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    await closed_sessions(store, engine)
    warehouse = tmp_path / "analytics.duckdb"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_ARCHIVER, database_url, str(warehouse)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "inserted"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()

    assert rows(warehouse) == {table: [] for table in TABLES}
    async with engine.connect() as conn:
        assert list(await conn.scalars(select(Conversation.archived_at).distinct())) == [None]
    assert await Archiver(engine, warehouse, "s").archive_closed() == 3
    assert [len(found) for found in rows(warehouse).values()] == [3, 8, 4]


async def test_the_jobs_close_archive_and_expire_each_tenants_data_on_its_own_terms(
    store: ConversationStore, engine: AsyncEngine, tmp_path: Path
) -> None:
    await exchange(store, "a", 0, contact=ALICE)
    await exchange(store, "g", 0, tenant="globex", contact=ALICE)
    terms = {
        "acme": DataSpec(retention_days=10, analytics_retention_days=100),
        "globex": DataSpec(retention_days=20, analytics_retention_days=15),
    }
    warehouse = tmp_path / "analytics.duckdb"
    jobs = Jobs(engine, warehouse, SECRET, terms.__getitem__)

    assert await jobs.run_all(T0 + timedelta(days=1)) == {"close_idle": True, "archive": True, "retention": True}
    assert [len(found) for found in rows(warehouse).values()] == [2, 4, 2]

    await jobs.run_all(T0 + timedelta(days=16))  # acme's conversations and globex's figures expire
    async with engine.connect() as conn:
        assert list(await conn.scalars(select(Conversation.tenant))) == ["globex"]
    assert {row[0] for row in rows(warehouse)["sessions"]} == {"acme"}
    assert rows(warehouse)["messages"] and {row[0] for row in rows(warehouse)["messages"]} == {"acme"}
