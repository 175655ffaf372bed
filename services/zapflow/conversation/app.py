"""The conversation service process: the engine plus a small health and metrics server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from zapflow.conversation.engine import INBOUND_CONSUMER, Engine
from zapflow.conversation.responder import Responder
from zapflow.conversation.rules import RulesResponder
from zapflow.conversation.settings import ConversationSettings
from zapflow.core import bus
from zapflow.core.http import ops_router
from zapflow.core.logging import configure_logging
from zapflow.core.runtime import ServiceRuntime
from zapflow.core.telemetry import configure_tracing
from zapflow.v1 import inbound_pb2

CONVERSATION_STREAMS = (bus.INBOUND, bus.OUTBOUND, bus.EVENTS, bus.DEAD_LETTER)


def responders(settings: ConversationSettings) -> dict[str, Responder]:
    from zapflow.conversation.llm import OpenAIResponder
    from zapflow.core import metrics

    def count_error(tenant: str, kind: str) -> None:
        metrics.RESPONDER_ERRORS.labels(tenant, kind).inc()

    return {"rules": RulesResponder(), "openai": OpenAIResponder(settings.core, on_error=count_error)}


def create_app(settings: ConversationSettings) -> FastAPI:
    holder: dict[str, ServiceRuntime] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime = await ServiceRuntime.start("conversation", settings.core, CONVERSATION_STREAMS)
        engine = Engine(runtime.nc, runtime.js, runtime.redis, runtime.registry, responders(settings), settings)
        await engine.start()
        await runtime.consume(INBOUND_CONSUMER, inbound_pb2.InboundMessage, engine.ingest)
        holder["runtime"] = runtime
        try:
            yield
        finally:
            # Stop taking messages first, then let running turns finish.
            for consumer in runtime.consumers:
                await consumer.stop()
            await engine.stop()
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
