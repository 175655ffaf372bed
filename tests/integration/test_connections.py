"""Connections a process declares: opened, declared and closed the same way everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.errors import NoServersError

from tests.support.servers import free_port
from zapflow.platform import catalogue
from zapflow.platform.connections import Needs, connected
from zapflow.platform.settings import CoreSettings
from zapflow.store.errors import StoreError


async def test_a_process_gets_what_it_declares_and_its_streams_exist(core: CoreSettings) -> None:
    needs = Needs(streams=(catalogue.INBOUND, catalogue.EVENTS), database=True)
    async with connected("probe", core, needs) as connections:
        assert await connections.redis.ping()
        assert connections.registry.ready.is_set()
        names = {info.config.name for info in await connections.js.streams_info()}
        assert {catalogue.INBOUND.name, catalogue.EVENTS.name} <= names
        assert catalogue.OUTBOUND.name not in names
        checks = await connections.readiness()
        assert checks == {"nats": True, "redis": True, "tenants": True}
    assert not connections.nc.is_connected


async def test_a_database_that_is_not_migrated_is_refused_before_anything_opens(
    core: CoreSettings, tmp_path: Path
) -> None:
    empty = core.model_copy(update={"database_url": f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"})
    with pytest.raises(StoreError, match="zapflow db upgrade"):
        async with connected("probe", empty, Needs(database=True)):
            pass


async def test_a_short_lived_command_fails_fast_when_nats_is_not_there() -> None:
    nowhere = CoreSettings(nats_url=f"nats://127.0.0.1:{free_port()}")
    with pytest.raises((NoServersError, OSError)):
        async with connected("cli", nowhere, Needs(redis=False), short_lived=True):
            pass
