"""The conversation service process: the engine plus a small health and metrics server."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from zapflow.conversation.engine import Engine
from zapflow.conversation.llm import OpenAIResponder
from zapflow.conversation.responder import Responder
from zapflow.conversation.rules import RulesResponder
from zapflow.conversation.settings import ConversationSettings
from zapflow.platform import catalogue, metrics
from zapflow.platform.http import FASTAPI_TELEMETRY_OFF, ops_router
from zapflow.platform.logging import configure_logging
from zapflow.platform.runtime import ServiceRuntime
from zapflow.platform.telemetry import configure_tracing
from zapflow.store.engine import create_engine
from zapflow.store.repository import ConversationStore
from zapflow.v1 import inbound_pb2

CONVERSATION_STREAMS = (catalogue.INBOUND, catalogue.OUTBOUND, catalogue.EVENTS, catalogue.DEAD_LETTER)


def count_responder_error(tenant: str, kind: str) -> None:
    metrics.RESPONDER_ERRORS.labels(tenant, kind).inc()


def create_app(settings: ConversationSettings, custom_responders: dict[str, Responder] | None = None) -> FastAPI:
    """The service; `custom_responders` replaces the built-in ones by name (tests, embedding)."""
    holder: dict[str, ServiceRuntime] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime = await ServiceRuntime.start("conversation", settings.core, CONVERSATION_STREAMS)
        llm = OpenAIResponder(settings.core, on_error=count_responder_error)
        chosen: dict[str, Responder] = {"rules": RulesResponder(), "openai": llm, **(custom_responders or {})}
        # History falls back to the relational store (written by the recorder) when Redis lost it.
        database = create_engine(settings.core.database_url) if settings.history_from_store else None
        store = ConversationStore(database) if database is not None else None
        engine = Engine(runtime.nc, runtime.js, runtime.redis, runtime.registry, chosen, settings, store)
        await engine.start()
        spec = dataclasses.replace(catalogue.CONVERSATION_INBOUND, ack_wait_s=settings.ack_wait_s)
        await runtime.consume(spec, inbound_pb2.InboundMessage, engine.ingest)
        holder["runtime"] = runtime
        try:
            yield
        finally:
            # Stop taking messages first, then let running turns finish.
            for consumer in runtime.consumers:
                await consumer.stop()
            await engine.stop()
            await llm.aclose()
            await runtime.stop()
            if database is not None:
                await database.dispose()

    app = FastAPI(
        title="zapflow conversation", lifespan=lifespan, docs_url=None, redoc_url=None, telemetry=FASTAPI_TELEMETRY_OFF
    )
    app.include_router(
        ops_router(
            lambda: holder.get("runtime"),
            settings.core.metrics_token,
        )
    )
    return app


def run(settings: ConversationSettings) -> None:
    configure_logging("conversation", settings.core.log_level, settings.core.log_json)
    configure_tracing("conversation", settings.core.otlp_endpoint)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False)
