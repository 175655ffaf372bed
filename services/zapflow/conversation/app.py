"""The conversation service: the engine, behind the platform's health and metrics server."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from zapflow.conversation.engine import Engine
from zapflow.conversation.faq import FaqResponder
from zapflow.conversation.llm import OpenAIResponder
from zapflow.conversation.responder import Responder
from zapflow.conversation.rules import RulesResponder
from zapflow.conversation.settings import ConversationSettings
from zapflow.knowledge.client import KnowledgeClient
from zapflow.platform import catalogue, metrics
from zapflow.platform.connections import Connections, Needs
from zapflow.platform.service import Service
from zapflow.store.engine import create_engine
from zapflow.store.repository import ConversationStore
from zapflow.v1 import inbound_pb2


def count_responder_error(tenant: str, kind: str) -> None:
    metrics.RESPONDER_ERRORS.labels(tenant, kind).inc()


def conversation_service(
    custom_responders: dict[str, Responder] | None = None,
) -> Service[ConversationSettings, Engine]:
    """The service; `custom_responders` replaces the built-in ones by name (tests, embedding)."""

    @asynccontextmanager
    async def build(settings: ConversationSettings, connections: Connections) -> AsyncIterator[Engine]:
        # Knowledge requests go to the embedding service over the service's own NATS connection.
        knowledge = KnowledgeClient(connections.nc, search_timeout_s=settings.knowledge_timeout_s)
        llm = OpenAIResponder(settings.core, on_error=count_responder_error, knowledge=knowledge)
        chosen: dict[str, Responder] = {
            "rules": RulesResponder(),
            "openai": llm,
            "faq": FaqResponder(knowledge, on_error=count_responder_error),
            **(custom_responders or {}),
        }
        # History falls back to the relational store (written by the recorder) when Redis lost it.
        # Opened here rather than declared in Needs: the engine answers without it, so an
        # unmigrated or missing database must not stop the service from starting.
        database = create_engine(settings.core.database_url) if settings.history_from_store else None
        store = ConversationStore(database) if database is not None else None
        engine = Engine(
            connections.nc, connections.js, connections.redis, connections.registry, chosen, settings, store
        )
        await engine.start()
        try:
            # A tenant's own replicas consume its messages again: the shared consumer ingests every tenant's.
            inbound = (
                catalogue.dedicated_conversation_consumer(settings.dedicated_tenant)
                if settings.dedicated_tenant is not None
                else catalogue.CONVERSATION_INBOUND
            )
            spec = dataclasses.replace(inbound, ack_wait_s=settings.ack_wait_s)
            await connections.consume(spec, inbound_pb2.InboundMessage, engine.ingest)
            yield engine
        finally:
            # The factory has stopped the inbound consumer by now; running turns finish here.
            await engine.stop()
            await llm.aclose()
            if database is not None:
                await database.dispose()

    return Service(
        name="conversation",
        summary="Debounce, ordering and exactly-once replies (health and metrics only).",
        needs=Needs(streams=(catalogue.INBOUND, catalogue.OUTBOUND, catalogue.EVENTS, catalogue.DEAD_LETTER)),
        build=build,
    )


CONVERSATION = conversation_service()
