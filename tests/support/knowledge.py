"""Helpers of the knowledge suites: passages and documents, a local embeddings server for the remote
backend, a replica whose index a test can inspect, and SQL and metric probes."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY
from sqlalchemy import Row, select
from sqlalchemy.sql import Executable

from tests.support.http import serve
from tests.support.openai_server import FakeOpenAI
from zapflow.knowledge.app import EMBEDDING, EmbeddingParts
from zapflow.knowledge.documents import read_document
from zapflow.knowledge.messages import CommitRequest, Origin, Passage, SearchReply
from zapflow.knowledge.service import Knowledge
from zapflow.knowledge.settings import EmbeddingSettings
from zapflow.knowledge.text import LanguageDetector
from zapflow.platform.service import Runtime, create_app
from zapflow.platform.settings import CoreSettings
from zapflow.store.engine import create_engine
from zapflow.store.models import KnowledgeVector

KB = Path(__file__).resolve().parents[2] / "bench" / "retrieval" / "kb"
DIMENSIONS = 32
TENANT = "shop"


@dataclass
class Remote:
    """A local OpenAI-compatible embeddings server for the remote backend."""

    fake: FakeOpenAI
    url: str

    def settings(self, model: str = "fake-embed") -> dict[str, Any]:
        return {
            "backend": "remote",
            "remote_url": f"{self.url}/v1",
            "remote_model": model,
            "remote_dimensions": DIMENSIONS,
        }

    def embedded(self, passages: Sequence[Passage]) -> list[str]:
        """Which of these passages' texts the server was asked to embed, as often as it was."""
        texts = {p.text for p in passages}
        return [text for request in self.fake.embedding_requests for text in request.inputs if text in texts]


@asynccontextmanager
async def remote_embeddings() -> AsyncIterator[Remote]:
    fake = FakeOpenAI(embedding_dimensions=DIMENSIONS)
    async with serve(fake.app()) as url:
        yield Remote(fake, url)


def passage(body: str, title: str = "", language: str = "en") -> Passage:
    return Passage(title=title, body=body, language=language)


def document(name: str, passages: Sequence[Passage], origin: Origin = "cli") -> CommitRequest:
    content = hashlib.sha256("\0".join(p.text for p in passages).encode()).hexdigest()
    return CommitRequest(name=name, kind="markdown", origin=origin, content_hash=content, passages=list(passages))


@functools.cache
def detector() -> LanguageDetector:
    """One for the suite: it takes about a second to load."""
    return LanguageDetector()


def kb_document(path: str) -> CommitRequest:
    """A file of the benchmark's knowledge base, read as `zapflow kb ingest` reads it."""
    parsed = read_document(KB / path, path, None, detector())
    return CommitRequest(name=parsed.name, kind=parsed.kind, content_hash=parsed.content_hash, passages=parsed.passages)


async def run_sql(core: CoreSettings, statement: Executable) -> list[Row[Any]]:
    engine = create_engine(core.database_url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(statement)
            return list(result) if result.returns_rows else []
    finally:
        await engine.dispose()


async def vector_hashes(core: CoreSettings, tenant: str, model: str | None = None) -> set[str]:
    query = select(KnowledgeVector.content_hash).where(KnowledgeVector.tenant == tenant)
    if model is not None:
        query = query.where(KnowledgeVector.model == model)
    return {row.content_hash for row in await run_sql(core, query)}


def embedded_total(tenant: str) -> float:
    labels = {"tenant": tenant, "collection": "knowledge"}
    return REGISTRY.get_sample_value("zapflow_knowledge_embedded_total", labels) or 0.0


def bodies(reply: SearchReply) -> list[str]:
    return [hit.body for hit in reply.hits]


SHIPPING = passage("Shipping costs R$ 14.90 and is free above R$ 299.", "Shipping")
RETURNS = passage("You may return any product within 7 days of delivery.", "Returns")
WARRANTY = passage("Every appliance has a 12 month manufacturer warranty.", "Warranty")
STORES = passage("Our stores open from 10am to 10pm, Monday to Saturday.", "Stores")


@asynccontextmanager
async def replica(core: CoreSettings, **settings: Any) -> AsyncIterator[Knowledge]:
    """A replica of the embedding service; yields its Knowledge, whose index the test inspects."""
    app = create_app(EMBEDDING, EmbeddingSettings(core=core, **settings))
    async with serve(app):
        runtime = app.state.runtime
        assert isinstance(runtime, Runtime) and isinstance(runtime.parts, EmbeddingParts)
        yield runtime.parts.knowledge


def indexed(knowledge: Knowledge) -> dict[str, int]:
    """The documents in a replica's memory and how many chunks each has there."""
    index = knowledge.index_of(TENANT)
    return {name: len(keys) for name, keys in index.documents.items() if keys}
