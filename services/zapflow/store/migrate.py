"""Schema migrations (Alembic), configured in code: no alembic.ini is needed at run time.

`zapflow db upgrade` and the start-up of `zapflow dev` call `upgrade()`. Each call runs in one
transaction, so on PostgreSQL a migration that fails leaves the schema as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from zapflow.store.engine import create_engine, redacted
from zapflow.store.errors import StoreError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
T = TypeVar("T")


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration; env.py runs the migrations on `connection` when given."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    """The newest revision this version of zapflow ships."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def upgrade(url: str, revision: str = "head") -> str | None:
    """Apply the migrations up to `revision`; returns the revision the database is at."""

    def apply(connection: Connection) -> str | None:
        command.upgrade(alembic_config(connection), revision)
        return _revision_of(connection)

    return await _run(url, apply)


async def downgrade(url: str, revision: str) -> str | None:
    """Revert the migrations down to `revision` ("base" reverts them all)."""

    def revert(connection: Connection) -> str | None:
        command.downgrade(alembic_config(connection), revision)
        return _revision_of(connection)

    return await _run(url, revert)


async def current_revision(url: str) -> str | None:
    """The revision the database is at; None when no migration was applied."""
    return await _run(url, _revision_of)


def _revision_of(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def _run(url: str, action: Callable[[Connection], T]) -> T:
    engine = create_engine(url)
    try:
        try:
            connection = await engine.connect()
        except (OSError, DBAPIError) as error:
            raise StoreError(f"cannot reach the database at {redacted(url)}: {_reason(error)}") from None
        try:
            await _prepare(connection)
            result = await connection.run_sync(action)
            await connection.commit()
            return result
        except CommandError as error:
            raise StoreError(str(error)) from None
        except DBAPIError as error:
            raise StoreError(f"migration failed on {redacted(url)}: {_reason(error)}") from None
        finally:
            await connection.close()
    finally:
        await engine.dispose()


async def _prepare(connection: AsyncConnection) -> None:
    if connection.dialect.name == "sqlite":
        # Batch migrations rebuild SQLite tables (copy, drop, rename); with foreign keys
        # enforced, dropping a referenced table would fail. This connection is migrations' own.
        await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")


def _reason(error: BaseException) -> str:
    if isinstance(error, DBAPIError) and error.orig is not None:
        error = error.orig
    return str(error).strip() or type(error).__name__


async def require_migrated(url: str) -> None:
    """Refuse to run against a database whose schema is not the newest one."""
    current, head = await current_revision(url), head_revision()
    if current != head:
        raise StoreError(f"the database {redacted(url)} is at revision {current}, not {head}: run `zapflow db upgrade`")
