"""Fixtures shared by every suite: real servers, started per test so tests cannot leak into each other."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from tests.support.servers import ManagedServer, nats_server, redis_server
from zapflow.platform import bus
from zapflow.platform.settings import CoreSettings
from zapflow.store.migrate import upgrade
from zapflow.tenants.registry import TenantRegistry, open_bucket

# Property-based tests: bounded and repeatable in the suite (derandomized: the same examples on
# every run); `--hypothesis-profile=long` runs many more, with fresh seeds (docs/webhook.md).
settings.register_profile(
    "suite", max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("long", max_examples=5_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")

# The headless-Chromium `page` fixture.
pytest_plugins = ["tests.support.browser"]


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[ManagedServer]:
    server = nats_server(tmp_path / "jetstream")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[ManagedServer]:
    (tmp_path / "redis").mkdir()
    server = redis_server(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def nc(nats: ManagedServer) -> AsyncIterator[NATS]:
    client = await bus.connect(nats.url, "zapflow-tests")
    yield client
    await client.close()


@pytest.fixture
async def js(nc: NATS) -> JetStreamContext:
    return nc.jetstream()


@pytest.fixture(scope="session")
async def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store at the newest schema, migrated once; tests get their own copy."""
    template = tmp_path_factory.mktemp("store") / "template.db"
    await upgrade(f"sqlite+aiosqlite:///{template}")
    return template


@pytest.fixture
def core(nats: ManagedServer, redis: ManagedServer, migrated_database: Path, tmp_path: Path) -> CoreSettings:
    database = tmp_path / "zapflow.db"
    shutil.copyfile(migrated_database, database)
    return CoreSettings(
        nats_url=nats.url, redis_url=f"{redis.url}/0", database_url=f"sqlite+aiosqlite:///{database}", log_json=True
    )


@pytest.fixture
async def registry(js: JetStreamContext, core: CoreSettings) -> TenantRegistry:
    return TenantRegistry(await open_bucket(js, core.tenant_bucket))
