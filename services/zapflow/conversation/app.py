"""The conversation service process: its consumer plus a small health and metrics server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from zapflow.conversation.service import INBOUND_CONSUMER, ConversationHandler
from zapflow.conversation.settings import ConversationSettings
from zapflow.core import bus
from zapflow.core.http import ops_router
from zapflow.core.logging import configure_logging
from zapflow.core.runtime import ServiceRuntime
from zapflow.core.telemetry import configure_tracing
from zapflow.v1 import inbound_pb2

CONVERSATION_STREAMS = (bus.INBOUND, bus.OUTBOUND, bus.EVENTS, bus.DEAD_LETTER)


def create_app(settings: ConversationSettings) -> FastAPI:
    holder: dict[str, ServiceRuntime] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime = await ServiceRuntime.start("conversation", settings.core, CONVERSATION_STREAMS)
        handler = ConversationHandler(runtime.js, runtime.redis, runtime.registry, settings)
        await runtime.consume(INBOUND_CONSUMER, inbound_pb2.InboundMessage, handler.handle)
        holder["runtime"] = runtime
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title="zapflow conversation", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.include_router(
        ops_router(
            lambda: holder["runtime"].readiness() if holder else {"started": False},
            settings.core.metrics_token,
        )
    )
    return app


def run(settings: ConversationSettings) -> None:
    configure_logging("conversation", settings.core.log_level, settings.core.log_json)
    configure_tracing("conversation", settings.core.otlp_endpoint)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False)
