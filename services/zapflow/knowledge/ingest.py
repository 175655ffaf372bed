"""`zapflow kb ingest`: every file is read and checked before anything is sent, then each document's
passages are embedded in batches (so a progress bar moves) and the document is committed.

A file that cannot be read, a document too large for one NATS message, or an ingest past the
tenant's quota stops the ingest before its first request: the knowledge base stays as it was.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from zapflow.knowledge.client import KnowledgeClient, KnowledgeError
from zapflow.knowledge.documents import expand, read_document
from zapflow.knowledge.messages import CommitReply, CommitRequest, EmbedRequest, ListReply
from zapflow.knowledge.quota import QuotaExceeded, require_quota
from zapflow.knowledge.text import LanguageDetector

# Passages per embed request: small enough for the progress bar to move every second or so.
EMBED_BATCH = 32


@dataclass(frozen=True)
class Source:
    """A file read, as the commit that stores it."""

    path: Path
    request: CommitRequest

    @property
    def passage_count(self) -> int:
        return len(self.request.passages)


@dataclass(frozen=True)
class Ingested:
    source: Source
    reply: CommitReply
    embedded: int  # passages the model ran over for this document, in its batches and its commit


def read_sources(paths: Sequence[Path], language: str | None, detector: LanguageDetector) -> list[Source]:
    """Every file the paths name, read; raises UnreadableDocument naming the first one that cannot be."""
    sources = []
    for path, name in expand(paths):
        document = read_document(path, name, language, detector)
        request = document.commit_request("cli")
        sources.append(Source(path, request))
    return sources


def check_fits(tenant: str, sources: Sequence[Source], listing: ListReply, max_payload: int) -> None:
    """Refuse, before anything is sent, an ingest that would fail part of the way through."""
    for source in sources:
        size = len(source.request.model_dump_json().encode())
        if size > max_payload:
            raise KnowledgeError(
                "invalid",
                f"{source.path}: {size:,} bytes as one request; the NATS server takes at most {max_payload:,} "
                "(its max_payload): split the file, or raise max_payload",
            )
    replaced = {source.request.name for source in sources}
    kept = listing.chunks - sum(document.chunks for document in listing.documents if document.name in replaced)
    try:
        require_quota(tenant, kept + sum(source.passage_count for source in sources), listing.quota)
    except QuotaExceeded as refused:
        raise KnowledgeError("quota", f"{refused}: nothing was ingested") from None


async def ingest(
    client: KnowledgeClient,
    tenant: str,
    sources: Sequence[Source],
    listing: ListReply,
    advance: Callable[[int], None],
) -> AsyncIterator[Ingested]:
    """Embed and commit each document in turn, calling `advance` with the passages done."""
    stored = {document.name: document.content_hash for document in listing.documents}
    for source in sources:
        request = source.request
        embedded = 0
        if stored.get(request.name) == request.content_hash:
            # The same bytes as stored: their vectors exist (the commit embeds any passage still missing).
            advance(source.passage_count)
        else:
            for start in range(0, source.passage_count, EMBED_BATCH):
                batch = request.passages[start : start + EMBED_BATCH]
                embedded += (await client.embed(tenant, EmbedRequest(passages=batch))).embedded
                advance(len(batch))
        reply = await client.commit(tenant, request)
        yield Ingested(source, reply, embedded + reply.embedded)
