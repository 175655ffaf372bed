"""The service factory: what every service gets without writing it again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends
from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from tests.support.http import serve
from zapflow.platform.connections import NOTHING, Connections, NotConnected
from zapflow.platform.service import Runtime, Service, create_app, runtime_dependency
from zapflow.platform.settings import CoreSettings, ServiceSettings


class ToySettings(ServiceSettings):
    greeting: str = "hello"


@dataclass(frozen=True)
class ToyParts:
    greeting: str
    stopped: list[str]


STOPPED: list[str] = []
Toy = Annotated[Runtime[ToySettings, ToyParts], Depends(runtime_dependency(ToySettings, ToyParts))]
router = APIRouter()


@router.get("/greeting")
async def greeting(runtime: Toy) -> dict[str, str]:
    """The part built at start-up, reached through the typed runtime."""
    return {"greeting": runtime.parts.greeting, "service": runtime.connections.name}


@router.get("/boom")
async def boom() -> None:
    """An unexpected failure."""
    raise KeyError("secret internals")


@asynccontextmanager
async def build(settings: ToySettings, connections: Connections) -> AsyncIterator[ToyParts]:
    yield ToyParts(settings.greeting, STOPPED)
    STOPPED.append("toy")


TOY = Service[ToySettings, ToyParts](name="toy", needs=NOTHING, build=build, routers=lambda _: (router,))


async def test_a_service_gets_health_readiness_metrics_and_its_typed_runtime() -> None:
    async with serve(create_app(TOY, ToySettings(greeting="olá"))) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"ready": True, "checks": {}})
        assert "python_info" in (await client.get("/metrics")).text
        assert (await client.get("/greeting")).json() == {"greeting": "olá", "service": "zapflow-toy"}
    assert STOPPED == ["toy"]


async def test_an_unexpected_error_is_a_500_with_a_reason_and_no_traceback() -> None:
    async with serve(create_app(TOY, ToySettings())) as url, httpx.AsyncClient(base_url=url) as client:
        answer = await client.get("/boom")
    assert answer.status_code == 500
    assert answer.json() == {"detail": "internal error: KeyError"}
    assert "secret internals" not in answer.text


async def test_metrics_can_require_a_bearer_token() -> None:
    settings = ToySettings(core=CoreSettings(metrics_token=SecretStr("s3cret")))
    async with serve(create_app(TOY, settings)) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers={"Authorization": "Bearer s3cret"})).status_code == 200


def test_a_connection_that_was_not_declared_is_a_clear_error() -> None:
    connections = Connections("zapflow-toy", CoreSettings())
    with pytest.raises(NotConnected, match="redis"):
        _ = connections.redis
    with pytest.raises(NotConnected, match="database"):
        _ = connections.database


def test_service_settings_read_their_own_prefix_and_the_core_one(monkeypatch: pytest.MonkeyPatch) -> None:
    class GreeterSettings(ServiceSettings):
        model_config = SettingsConfigDict(env_prefix="ZAPFLOW_GREETER_")
        greeting: str = "hello"

    monkeypatch.setenv("ZAPFLOW_GREETER_GREETING", "oi")
    monkeypatch.setenv("ZAPFLOW_GREETER_PORT", "9123")
    monkeypatch.setenv("ZAPFLOW_LOG_LEVEL", "DEBUG")
    settings = GreeterSettings()
    assert (settings.greeting, settings.port, settings.core.log_level) == ("oi", 9123, "DEBUG")
