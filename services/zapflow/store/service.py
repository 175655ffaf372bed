"""`zapflow recorder`: the process that keeps the relational store current from the bus.

A process of its own rather than a part of the conversation service: the bench measured that
recording in the engine's process doubled its CPU and pushed turn latency past its target.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import lru_cache

import uvicorn
from fastapi import FastAPI
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from zapflow.platform.http import FASTAPI_TELEMETRY_OFF, ops_router
from zapflow.platform.logging import configure_logging
from zapflow.platform.runtime import ServiceRuntime
from zapflow.platform.settings import CoreSettings
from zapflow.platform.telemetry import configure_tracing
from zapflow.store.engine import create_engine
from zapflow.store.migrate import require_migrated
from zapflow.store.recorder import RECORDED_STREAMS, Recorder, WriteBatcher
from zapflow.store.repository import ConversationStore


class RecorderSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ZAPFLOW_RECORDER_", env_file=".env", extra="ignore")

    core: CoreSettings = Field(default_factory=CoreSettings)
    # Health and metrics only.
    host: str = "0.0.0.0"
    port: int = 8002
    # At most this many events per transaction; the oldest waiting event waits at most the linger
    # for others (under load they gather anyway while the previous batch is being written).
    batch_max_events: int = Field(default=200, ge=1)
    batch_linger_ms: float = Field(default=5.0, ge=0)


@lru_cache
def get_settings() -> RecorderSettings:
    return RecorderSettings()


def create_app(settings: RecorderSettings) -> FastAPI:
    holder: dict[str, ServiceRuntime] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await require_migrated(settings.core.database_url)
        database = create_engine(settings.core.database_url)
        runtime = await ServiceRuntime.start("recorder", settings.core, RECORDED_STREAMS)
        batcher = WriteBatcher(ConversationStore(database), settings.batch_max_events, settings.batch_linger_ms / 1000)
        await Recorder(batcher).start(runtime)
        holder["runtime"] = runtime
        try:
            yield
        finally:
            await runtime.stop()
            await database.dispose()

    app = FastAPI(
        title="zapflow recorder", lifespan=lifespan, docs_url=None, redoc_url=None, telemetry=FASTAPI_TELEMETRY_OFF
    )
    app.include_router(ops_router(lambda: holder.get("runtime"), settings.core.metrics_token))
    return app


def run(settings: RecorderSettings) -> None:
    """Serve the recorder; raises StoreError first when the database is not migrated."""
    asyncio.run(require_migrated(settings.core.database_url))
    configure_logging("recorder", settings.core.log_level, settings.core.log_json)
    configure_tracing("recorder", settings.core.otlp_endpoint)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False)
