"""CPU per event of the relational store's writes, as the recorder makes them.

    uv run python bench/store_writes.py            # 1,000 turns on a SQLite file: per event, then batches
    uv run python bench/store_writes.py --turns 5000 --batch 500
    uv run python bench/store_writes.py --postgres postgresql://postgres@127.0.0.1:5432/postgres

Each turn of the benchmark's end-to-end phase gives the recorder four events (the customer's
message, the turn, the reply command, the Graph API result), for 1,400 contacts. CPU is the
process's user + system time, so aiosqlite's worker thread (where SQLite runs) is counted. With
`--postgres` (a server and a role that may create databases) each measurement writes into a
database of its own, created and dropped around it, and the server's share is reported apart:
the CPU of the server processes serving that database, read from /proc (so the server must run
on this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/store_writes.py` puts bench/, not the repo root, on the path
    sys.path.insert(0, str(ROOT))

from google.protobuf.timestamp_pb2 import Timestamp  # noqa: E402
from sqlalchemy import make_url  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from zapflow.store import migrate  # noqa: E402
from zapflow.store.engine import create_engine, parse_database_url, sqlite_url  # noqa: E402
from zapflow.store.repository import ConversationStore, Event, SequencedInbound  # noqa: E402
from zapflow.v1 import inbound_pb2, outbound_pb2, turn_pb2  # noqa: E402

CONTACTS = 1400


def turn_events(turns: int) -> list[Event]:
    now = Timestamp()
    now.GetCurrentTime()
    events: list[Event] = []
    for n in range(turns):
        contact, turn_id, wamid = f"55120{n % CONTACTS:08d}", f"in{n}-{n}", f"wamid.in.{n}"
        message = inbound_pb2.InboundMessage(
            tenant="bench", contact=contact, contact_name="Maria", wamid=wamid, sent_at=now, type="text",
            text=inbound_pb2.Text(body="how much?"),
        )  # fmt: skip
        command = outbound_pb2.OutboundCommand(
            command_id=f"{turn_id}:0", tenant="bench", contact=contact, turn_id=turn_id, created_at=now,
            reply_to_wamid=wamid, text=outbound_pb2.OutText(body="Plans start at $10."),
        )  # fmt: skip
        events += [
            SequencedInbound(message, n + 1),
            turn_pb2.Turn(
                turn_id=turn_id, tenant="bench", contact=contact, inbound_wamids=[wamid], responder="rules",
                outcome="rule", rule="prices", started_at=now, closed_at=now, answered_at=now,
            ),
            command,
            outbound_pb2.OutboundResult(
                command_id=command.command_id, tenant="bench", contact=contact, turn_id=turn_id, result="sent",
                wamid=f"wamid.out.{n}", at=now,
            ),
        ]  # fmt: skip
    return events


async def record_one(store: ConversationStore, event: Event) -> None:
    match event:
        case SequencedInbound(message, seq):
            await store.record_inbound(message, seq)
        case outbound_pb2.OutboundCommand():
            await store.record_outbound(event)
        case outbound_pb2.OutboundResult():
            await store.record_outbound_result(event)
        case inbound_pb2.StatusUpdate():
            await store.record_status(event)
        case turn_pb2.Turn():
            await store.record_turn(event)


@asynccontextmanager
async def sqlite_database() -> AsyncIterator[str]:
    with tempfile.TemporaryDirectory(prefix="zapflow-store-writes-") as directory:
        yield sqlite_url(Path(directory))


@asynccontextmanager
async def postgres_database(admin_url: str) -> AsyncIterator[str]:
    """A database of its own on the server of `admin_url`, dropped afterwards."""
    name = f"zapflow_bench_{secrets.token_hex(6)}"
    admin = create_async_engine(parse_database_url(admin_url), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            async with admin.connect() as conn:
                await conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.dispose()


def server_cpu_s(database: str) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend serving `database`, by pid (its title names it)."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if not title.startswith("postgres:") or f" {database} " not in title:
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        found[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return found


async def measure(url: str, events: list[Event], batch: int) -> None:
    """Write every event into a new database, one per transaction (batch 1) or `batch` at a time."""
    await migrate.upgrade(url)
    engine = create_engine(url)
    store = ConversationStore(engine)
    parsed = make_url(url)
    database = parsed.database if parsed.get_backend_name() == "postgresql" else None
    server_before = server_cpu_s(database) if database else {}
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    if batch == 1:
        for event in events:
            await record_one(store, event)
    else:
        for start in range(0, len(events), batch):
            failed = [o for o in await store.record_batch(events[start : start + batch]) if isinstance(o, Exception)]
            if failed:
                raise failed[0]
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - started
    server_after = server_cpu_s(database) if database else {}
    await engine.dispose()
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    how = "one transaction per event" if batch == 1 else f"batches of {batch}"
    line = (
        f"{how:26} {len(events)} events: {1000 * cpu / len(events):.2f} ms CPU per event, "
        f"{len(events) / wall:.0f} events/s"
    )
    if database:
        server = sum(cpu_s - server_before.get(pid, 0.0) for pid, cpu_s in server_after.items())
        line += f"; PostgreSQL's backends {1000 * server / len(events):.2f} ms CPU per event"
    print(line, flush=True)


async def main(turns: int, batch: int, postgres: str | None) -> None:
    events = turn_events(turns)
    for size in (1, batch):
        async with postgres_database(postgres) if postgres else sqlite_database() as url:
            await measure(url, events, size)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=200, help="events per transaction of the batched run (200)")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="write to PostgreSQL: a server on this machine, as a role that may create databases",
    )
    args = parser.parse_args()
    asyncio.run(main(args.turns, args.batch, args.postgres))
