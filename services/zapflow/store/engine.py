"""The async engine: PostgreSQL through asyncpg in production, SQLite through aiosqlite embedded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import URL, event, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from zapflow.store.errors import StoreError

ASYNC_DRIVERS = {"postgresql": "asyncpg", "sqlite": "aiosqlite"}
# A PostgreSQL server that does not answer should be an error within seconds, not a minute.
CONNECT_TIMEOUT_S = 10.0
# How long a SQLite writer waits for another to finish (SQLite has one writer at a time).
SQLITE_BUSY_TIMEOUT_S = 30.0


def sqlite_url(data_dir: Path) -> str:
    """The embedded database of a data directory, e.g. `zapflow dev --data-dir`."""
    return f"sqlite+aiosqlite:///{data_dir / 'zapflow.db'}"


def parse_database_url(url: str) -> URL:
    """Parse a database URL, giving `postgresql://` and `sqlite://` their async drivers."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"not a database URL: {redacted(url)}") from None
    backend = parsed.get_backend_name()
    driver = ASYNC_DRIVERS.get(backend)
    if driver is None:
        raise StoreError(f"unsupported database {backend!r}: use postgresql+asyncpg:// or sqlite+aiosqlite://")
    if parsed.get_driver_name() != driver:
        parsed = parsed.set(drivername=f"{backend}+{driver}")
    return parsed


def redacted(url: str | URL) -> str:
    """A URL fit for messages and logs: the password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def create_engine(url: str) -> AsyncEngine:
    """An engine for either database; the caller disposes of it.

    hide_parameters: a failed statement's error would otherwise quote its values (phone numbers,
    message text), and errors reach logs and dead-letter reasons.
    """
    parsed = parse_database_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed)
    # pre-ping: a connection the server dropped (restart, failover) is replaced, not used.
    return create_async_engine(
        parsed, pool_pre_ping=True, hide_parameters=True, connect_args={"timeout": CONNECT_TIMEOUT_S}
    )


def _sqlite_engine(url: URL) -> AsyncEngine:
    if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        directory = Path(url.database).parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot create {directory} for the SQLite database: {error.strerror}") from None
    engine = create_async_engine(url, hide_parameters=True, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
    event.listen(engine.sync_engine, "connect", _configure_sqlite_connection)
    return engine


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # SQLite ignores foreign keys unless asked, per connection.
    cursor.execute("PRAGMA foreign_keys=ON")
    # Readers do not block the writer and the writer does not block readers.
    cursor.execute("PRAGMA journal_mode=WAL")
    # Deleted rows (retention, erasure) are overwritten with zeros, not left in free pages.
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


async def flush_deleted_rows(engine: AsyncEngine) -> bool:
    """Make deleted rows' bytes leave the disk where the database allows it; True when done.

    SQLite keeps earlier versions of changed pages in its write-ahead log until a checkpoint
    copies the log into the database: a TRUNCATE checkpoint does that and empties the log file.
    It fails (False) while another connection reads an older snapshot; the next call retries.
    PostgreSQL keeps dead tuples in its pages until they are reused and in its WAL and backups
    for their retention: that is the operator's to bound (documented in the privacy README).
    """
    if engine.dialect.name != "sqlite":
        return True
    async with engine.connect() as conn:
        checkpoint = (await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")).one()
    # (busy, frames in the log, frames checkpointed): busy is 1 when a reader held it back.
    return not checkpoint[0]
