"""Fixtures of the knowledge suite: the embedding service on real NATS, Redis and SQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from tests.support.http import serve
from zapflow.knowledge.app import EMBEDDING
from zapflow.knowledge.client import KnowledgeClient
from zapflow.knowledge.settings import EmbeddingSettings
from zapflow.platform.service import create_app
from zapflow.platform.settings import CoreSettings

Embedding = Callable[..., AbstractAsyncContextManager[str]]


@pytest.fixture
def embedding_service(core: CoreSettings) -> Embedding:
    """Start the embedding service (settings as keywords; `backend="none"` for lexical only); yields its URL."""

    @asynccontextmanager
    async def running(**settings: Any) -> AsyncIterator[str]:
        async with serve(create_app(EMBEDDING, EmbeddingSettings(core=core, **settings))) as url:
            yield url

    return running


@pytest.fixture
def knowledge(nc: NATS) -> KnowledgeClient:
    return KnowledgeClient(nc)
