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

from tests.analytics.handoffs import AGENT, add_handoff
from tests.store.conversations import ALICE, BOB, exchange
from tests.store.events import T0, at
from zapflow.analytics import pseudonym
from zapflow.analytics.archive import Archiver
from zapflow.analytics.warehouse import TABLES, open_warehouse
from zapflow.scheduler.jobs import Jobs
from zapflow.store.lifecycle import close_idle_conversations
from zapflow.store.models import Conversation, Handoff
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
            "handoffs": warehouse.execute(
                "SELECT tenant, session_id, contact_key, reason, labels, requested_at, assigned_at, first_reply_at, "
                "resolved_at, resolution, wait_s, first_reply_s, resolve_s FROM handoffs ORDER BY ALL"
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


async def test_a_session_is_handed_off_when_its_contact_asked_for_a_person_during_it(
    store: ConversationStore, engine: AsyncEngine, tmp_path: Path
) -> None:
    await exchange(store, "a", 0, contact=ALICE)  # 0 to 2 s
    await exchange(store, "b", 10, contact=BOB)  # 10 to 12 s
    await exchange(store, "g", 0, tenant="globex", contact=ALICE)
    async with engine.connect() as conn:
        globex_alice = await conn.scalar(select(Conversation.id).where(Conversation.tenant == "globex"))
    # Alice's handoff came before the store knew her conversation: matched by its time.
    await add_handoff(engine, ALICE, requested=1, resolved=1.5)
    # Bob's came after his session: another session's, not this one.
    await add_handoff(engine, BOB, requested=300, resolved=400)
    # Globex's names its conversation (its time is the request's turn, a moment before the session opened).
    await add_handoff(engine, ALICE, tenant="globex", conversation_id=globex_alice, requested=-1, resolved=1)
    assert await close_idle_conversations(engine, lambda _: DataSpec(), at(3600)) == 3
    warehouse = tmp_path / "analytics.duckdb"

    await Archiver(engine, warehouse, SECRET).archive_closed()

    handed_off = {(row[0], row[1]): row[-1] for row in rows(warehouse)["sessions"]}
    assert handed_off == {
        ("acme", key("acme", ALICE)): True,
        ("acme", key("acme", BOB)): False,
        ("globex", key("globex", ALICE)): True,
    }


async def test_resolved_handoffs_are_archived_once_as_figures_and_open_ones_wait(
    store: ConversationStore, engine: AsyncEngine, tmp_path: Path
) -> None:
    await closed_sessions(store, engine)
    async with engine.connect() as conn:
        alice = await conn.scalar(
            select(Conversation.id).where(Conversation.tenant == "acme", Conversation.contact == ALICE)
        )
    first = await add_handoff(
        engine, ALICE, reason="llm", requested=1, assigned=3, first_reply=5, resolved=8, note="owes us", labels=("vip",)
    )
    async with engine.begin() as conn:  # transferred later: the wait ended with the first agent
        await conn.execute(Handoff.__table__.update().where(Handoff.id == first).values(assigned_at=at(6)))
    await add_handoff(engine, ALICE, tenant="globex", requested=900, resolved=960)  # no agent came: timed out
    await add_handoff(engine, BOB, requested=900, assigned=905)  # still open
    warehouse = tmp_path / "analytics.duckdb"
    archiver = Archiver(engine, warehouse, SECRET)

    await archiver.archive_closed()

    naive = at(0).replace(tzinfo=None)

    def moment(seconds: float) -> object:
        return naive + timedelta(seconds=seconds)

    expected = [
        ("acme", alice, key("acme", ALICE), "llm", ["vip"], moment(1), moment(3), moment(5), moment(8), "agent",
         2.0, 4.0, 7.0),
        ("globex", None, key("globex", ALICE), "customer_asked", [], moment(900), None, None, moment(960), "timeout",
         None, None, 60.0),
    ]  # fmt: skip
    assert rows(warehouse)["handoffs"] == expected
    contents = warehouse.read_bytes()
    for personal in (ALICE.encode(), AGENT.encode(), b"owes us", b"Maria", b"invoice"):
        assert personal not in contents

    # Again (only the margin before the latest resolution is read again), then after the open one is
    # resolved: one row each, the new one added.
    assert await archiver.archive_resolved_handoffs() == 1
    assert rows(warehouse)["handoffs"] == expected
    async with engine.begin() as conn:
        await conn.execute(
            Handoff.__table__.update()
            .where(Handoff.contact == BOB)
            .values(status="resolved", resolved_at=at(1000), resolution="agent")
        )
    await archiver.archive_resolved_handoffs()
    assert [row[:4] for row in rows(warehouse)["handoffs"]] == [
        ("acme", alice, key("acme", ALICE), "llm"),
        ("acme", None, key("acme", BOB), "customer_asked"),
        ("globex", None, key("globex", ALICE), "customer_asked"),
    ]


async def test_a_handoff_whose_resolution_committed_late_is_still_archived(engine: AsyncEngine, tmp_path: Path) -> None:
    await add_handoff(engine, ALICE, requested=0, resolved=600)
    warehouse = tmp_path / "analytics.duckdb"
    archiver = Archiver(engine, warehouse, SECRET)
    assert await archiver.archive_resolved_handoffs() == 1
    # Resolved a minute before the one archived, by a transaction that committed after the run.
    await add_handoff(engine, BOB, requested=0, resolved=540)

    assert await archiver.archive_resolved_handoffs() == 2  # the margin reads both again
    assert [(row[2], row[8]) for row in rows(warehouse)["handoffs"]] == sorted(
        [(key("acme", ALICE), at(600).replace(tzinfo=None)), (key("acme", BOB), at(540).replace(tzinfo=None))]
    )


async def test_handoffs_are_archived_in_batches_each_once_ties_included(engine: AsyncEngine, tmp_path: Path) -> None:
    for contact, resolved in (("5511900000101", 10), ("5511900000102", 10), ("5511900000103", 10), (ALICE, 20)):
        await add_handoff(engine, contact, requested=0, resolved=resolved)
    warehouse = tmp_path / "analytics.duckdb"

    assert await Archiver(engine, warehouse, SECRET).archive_resolved_handoffs(batch_handoffs=2) == 4
    assert len(rows(warehouse)["handoffs"]) == 4


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
    assert [len(found) for found in rows(warehouse).values()] == [3, 8, 4, 0]


async def test_the_jobs_close_archive_and_expire_each_tenants_data_on_its_own_terms(
    store: ConversationStore, engine: AsyncEngine, tmp_path: Path
) -> None:
    await exchange(store, "a", 0, contact=ALICE)
    await exchange(store, "g", 0, tenant="globex", contact=ALICE)
    await add_handoff(engine, ALICE, requested=1, assigned=1, first_reply=1, resolved=2)
    await add_handoff(engine, ALICE, tenant="globex", requested=1, resolved=2)
    terms = {
        "acme": DataSpec(retention_days=10, analytics_retention_days=100),
        "globex": DataSpec(retention_days=20, analytics_retention_days=15),
    }
    warehouse = tmp_path / "analytics.duckdb"
    jobs = Jobs(engine, warehouse, SECRET, terms.__getitem__)

    assert await jobs.run_all(T0 + timedelta(days=1)) == {"close_idle": True, "archive": True, "retention": True}
    assert [len(found) for found in rows(warehouse).values()] == [2, 4, 2, 2]

    await jobs.run_all(T0 + timedelta(days=16))  # acme's conversations and globex's figures expire
    async with engine.connect() as conn:
        assert list(await conn.scalars(select(Conversation.tenant))) == ["globex"]
        assert list(await conn.scalars(select(Handoff.tenant))) == ["globex"]
    assert {row[0] for row in rows(warehouse)["sessions"]} == {"acme"}
    assert rows(warehouse)["messages"] and {row[0] for row in rows(warehouse)["messages"]} == {"acme"}
    assert [row[0] for row in rows(warehouse)["handoffs"]] == ["acme"]
