"""`zapflow recorder`: the process that keeps the relational store current from the bus.

A process of its own rather than a part of the conversation service: the bench measured that
recording in the engine's process doubled its CPU and pushed turn latency past its target.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from zapflow.platform.http import FASTAPI_TELEMETRY_OFF, ops_router
from zapflow.platform.logging import configure_logging
from zapflow.platform.runtime import ServiceRuntime
from zapflow.platform.telemetry import configure_tracing
from zapflow.recorder.settings import RecorderSettings
from zapflow.recorder.writer import RECORDED_STREAMS, Recorder, WriteBatcher
from zapflow.store.engine import create_engine
from zapflow.store.migrate import require_migrated
from zapflow.store.repository import ConversationStore


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
