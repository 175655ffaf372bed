"""The privacy suite runs on PostgreSQL and on SQLite, with the store suite's databases."""

from tests.store.conftest import database_url, engine

__all__ = ["database_url", "engine"]
