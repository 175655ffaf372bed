"""The knowledge service's work: search, ingest, the turn index, and keeping every replica's
in-memory index equal to SQL.

SQL is the truth; each replica's memory is an index of it. A replica loads its tenants from SQL
at start, then applies the changes other replicas publish on ZF_KNOWLEDGE (from the moment it
began loading, so none falls between). A change names a document or turn rows, and the replica
reads them from SQL: applying a change twice, or after a newer one, gives the same index.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from zapflow.knowledge.encoders import Encoder, QueryCache, Vector
from zapflow.knowledge.index import Collection, P, Scored
from zapflow.knowledge.messages import (
    CommitReply,
    CommitRequest,
    EmbedReply,
    EmbedRequest,
    Hit,
    ListReply,
    ListRequest,
    Passage,
    RemoveReply,
    RemoveRequest,
    SearchReply,
    SearchRequest,
    ShowReply,
    ShowRequest,
)
from zapflow.knowledge.quota import require_quota
from zapflow.knowledge.settings import EmbeddingSettings
from zapflow.knowledge.store import KnowledgeStore, StoredTurn, passage_hash
from zapflow.knowledge.text import Analyzer, LanguageDetector
from zapflow.platform import catalogue, metrics
from zapflow.platform.logging import get_logger
from zapflow.v1 import knowledge_pb2, turn_pb2

log = get_logger(__name__)

# (tenant, kind, change, dedup id): publishes a change for the other replicas.
Announce = Callable[[str, str, knowledge_pb2.KnowledgeChange, str], Awaitable[None]]


class NotFound(Exception):
    """The document asked for does not exist."""


@dataclass(frozen=True)
class ChunkEntry:
    document: str
    position: int
    passage: Passage


@dataclass
class TenantIndex:
    knowledge: Collection[ChunkEntry]
    turns: Collection[int]  # turn_vectors row ids: hits are read back from SQL
    documents: dict[str, set[str]] = field(default_factory=dict)  # document: its keys in `knowledge`
    versions: dict[str, datetime] = field(default_factory=dict)  # document: its updated_at when loaded


def chunk_key(document: str, position: int) -> str:
    return f"{document}\0{position}"


class Knowledge:
    def __init__(
        self, settings: EmbeddingSettings, store: KnowledgeStore, encoder: Encoder | None, announce: Announce
    ) -> None:
        self._settings = settings
        self._store = store
        self._encoder = encoder
        self._announce = announce
        self._analyzer = Analyzer()
        self._detector = LanguageDetector()
        self._cache = QueryCache(settings.query_cache_size)
        self._indexes: dict[str, TenantIndex] = {}
        self._dimensions = encoder.dimensions if encoder is not None else 1
        self._served = frozenset(settings.tenants)
        self._reloading: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    @property
    def model(self) -> str | None:
        return self._encoder.model if self._encoder is not None else None

    def serves(self, tenant: str) -> bool:
        return not self._served or tenant in self._served

    def index_of(self, tenant: str) -> TenantIndex:
        index = self._indexes.get(tenant)
        if index is None:
            index = self._indexes[tenant] = TenantIndex(Collection(self._dimensions), Collection(self._dimensions))
        return index

    # --- start-up ---

    async def load(self) -> None:
        """Build the index of every served tenant from SQL."""
        started = time.perf_counter()
        for tenant in await self._store.tenants():
            if self.serves(tenant):
                await self._reload_tenant(tenant)
        chunks = sum(len(index.knowledge) for index in self._indexes.values())
        turns = sum(len(index.turns) for index in self._indexes.values())
        log.info(
            "knowledge index loaded",
            tenants=len(self._indexes),
            chunks=chunks,
            turns=turns,
            seconds=round(time.perf_counter() - started, 2),
        )

    async def backfill(self) -> int:
        """Embed chunks that have no vector of the current model (the model changed); returns how many."""
        if self._encoder is None:
            return 0
        embedded = 0
        for tenant in list(self._indexes):
            missing: dict[str, list[Passage]] = {}
            async for chunk in self._store.chunks(tenant, self.model):
                if chunk.vector is None:
                    missing.setdefault(chunk.document, []).append(chunk.passage)
            for document, passages in missing.items():
                embedded += await self._embed_missing(tenant, passages)
                await self._reload_document(tenant, document)
        return embedded

    async def repair(self) -> list[tuple[str, str]]:
        """Reload every document whose version in SQL differs from the one in memory: a change whose
        notice was lost (NATS failed after the SQL write) is applied here. Returns (tenant, document)."""
        repaired = []
        for tenant in await self._store.tenants():
            if not self.serves(tenant):
                continue
            index = self.index_of(tenant)
            versions = await self._store.document_versions(tenant)
            stale = {name for name, at in versions.items() if index.versions.get(name) != at}
            stale |= set(index.versions) - set(versions)
            for name in sorted(stale):
                await self._reload_document(tenant, name)
                repaired.append((tenant, name))
            if stale:
                self._observe_size(tenant)
        return repaired

    async def _reload_tenant(self, tenant: str) -> None:
        index = self._indexes[tenant] = TenantIndex(Collection(self._dimensions), Collection(self._dimensions))
        # Versions first: a document changed while the chunks load looks stale to the next repair.
        index.versions = await self._store.document_versions(tenant)
        async for chunk in self._store.chunks(tenant, self.model):
            self._put_chunk(index, ChunkEntry(chunk.document, chunk.position, chunk.passage), chunk.vector)
        for turn in await self._store.turns(tenant, self.model):
            self._put_turn(index, turn)
        self._observe_size(tenant)

    # --- requests ---

    async def search(self, tenant: str, request: SearchRequest) -> SearchReply:
        started = time.perf_counter()
        index = self.index_of(tenant)
        if request.collection == "knowledge":
            languages = self._languages_to_search(index.knowledge, request)
            chunks = await self._ranked(index.knowledge, request, languages)
            if not chunks and languages is not None and request.language is None:
                # Nothing in the detected language shares a word with the question (lexical mode;
                # a word or two are easily taken for another language): every language, then.
                languages = None
                chunks = await self._ranked(index.knowledge, request, languages)
            hits = [
                Hit(
                    score=hit.score,
                    similarity=hit.similarity,
                    lexical=hit.lexical,
                    title=hit.payload.passage.title,
                    body=hit.payload.passage.body,
                    language=hit.payload.passage.language,
                    document=hit.payload.document,
                    position=hit.payload.position,
                )
                for hit in chunks
            ]
            hybrid = index.knowledge.has_vectors
        else:
            languages = None
            hits = await self._turn_hits(tenant, index, await self._ranked(index.turns, request, None))
            hybrid = index.turns.has_vectors
        metrics.KNOWLEDGE_SEARCH_SECONDS.labels(tenant, request.collection).observe(time.perf_counter() - started)
        mode = "hybrid" if hybrid and self._encoder is not None else "lexical"
        return SearchReply(mode=mode, language=languages[0] if languages else None, hits=hits)

    async def _ranked(
        self, collection: Collection[P], request: SearchRequest, languages: tuple[str, ...] | None
    ) -> list[Scored[P]]:
        terms = self._analyzer.query_terms(request.text, languages or collection.languages)
        query = None
        if self._encoder is not None and collection.has_vectors:
            query = await self._cache.query(self._encoder, request.text)
        return collection.search(terms, query, languages, request.limit, self._settings.dense_weight)

    async def embed(self, tenant: str, request: EmbedRequest) -> EmbedReply:
        embedded = await self._embed_missing(tenant, request.passages)
        distinct = len({passage_hash(p) for p in request.passages})
        reused = distinct - embedded if self._encoder is not None else 0
        return EmbedReply(embedded=embedded, reused=reused)

    async def commit(self, tenant: str, request: CommitRequest) -> CommitReply:
        # The quota is checked again inside the transaction; this refuses before any embedding.
        others = await self._store.chunk_count(tenant, excluding=request.name)
        require_quota(tenant, others + len(request.passages), self._settings.max_chunks_per_tenant)
        embedded = await self._embed_missing(tenant, request.passages)
        replaced = await self._store.replace_document(
            tenant,
            request.name,
            request.kind,
            request.origin,
            request.content_hash,
            request.passages,
            self._settings.max_chunks_per_tenant,
        )
        if not replaced.unchanged:
            await self._document_changed(tenant, request.name, replaced.document.updated_at)
        return CommitReply(
            document=replaced.document,
            unchanged=replaced.unchanged,
            added=replaced.added,
            removed=replaced.removed,
            kept=replaced.kept,
            embedded=embedded,
        )

    async def remove_documents(self, tenant: str, request: RemoveRequest) -> RemoveReply:
        removed, missing = [], []
        for name in dict.fromkeys(request.names):
            if await self._store.remove_document(tenant, name):
                removed.append(name)
                await self._document_changed(tenant, name, datetime.now(UTC))
            else:
                missing.append(name)
        return RemoveReply(removed=removed, missing=missing)

    async def list_documents(self, tenant: str, request: ListRequest) -> ListReply:
        documents = await self._store.documents(tenant, request.origin)
        return ListReply(
            documents=documents,
            chunks=await self._store.chunk_count(tenant),
            quota=self._settings.max_chunks_per_tenant,
            turns=await self._store.turn_count(tenant),
            model=self.model,
        )

    async def show_document(self, tenant: str, request: ShowRequest) -> ShowReply:
        found = await self._store.document(tenant, request.name)
        if found is None:
            raise NotFound(f"tenant {tenant} has no document {request.name!r}")
        document, passages = found
        return ShowReply(document=document, passages=passages)

    # --- turns ---

    async def embed_turn(self, turn: turn_pb2.Turn) -> None:
        """Index a finished turn's words; a turn seen before changes nothing."""
        text = turn.customer_text.strip()
        if not text or not self.serves(turn.tenant):
            return
        language = self._detector.detect(text)
        vector = None
        if self._encoder is not None:
            vector = (await self._encoder.passages([text]))[0]
        at = turn.started_at.ToDatetime(tzinfo=UTC) if turn.HasField("started_at") else datetime.now(UTC)
        row = await self._store.save_turn(
            turn.tenant,
            turn.turn_id,
            turn.contact,
            at,
            language,
            (text, turn.answer_text),
            self.model or "",
            vector,
        )
        if row is None:
            return
        metrics.KNOWLEDGE_CHUNKS_EMBEDDED.labels(turn.tenant, "turns").inc(1 if vector is not None else 0)
        change = knowledge_pb2.KnowledgeChange(tenant=turn.tenant, turn_rows=[row])
        await self.apply(catalogue.TURN_EMBEDDED, change)
        await self._announce(turn.tenant, catalogue.TURN_EMBEDDED, change, f"turn:{turn.tenant}:{turn.turn_id}")

    # --- changes from any replica ---

    async def apply(self, kind: str, change: knowledge_pb2.KnowledgeChange) -> None:
        if not self.serves(change.tenant):
            return
        if kind == catalogue.DOCUMENT_CHANGED:
            await self._reload_document(change.tenant, change.document)
        elif kind == catalogue.TURN_EMBEDDED:
            index = self.index_of(change.tenant)
            wanted = [row for row in change.turn_rows if str(row) not in index.turns]
            for turn in await self._store.turns(change.tenant, self.model, wanted) if wanted else []:
                self._put_turn(index, turn)
        elif kind == catalogue.TURNS_FORGOTTEN:
            index = self.index_of(change.tenant)
            for row in change.turn_rows:
                index.turns.remove(str(row))
        elif kind == catalogue.TENANT_ERASED:
            # SQL holds nothing of the tenant any more: the reload leaves an empty index and zero figures.
            await self._reload_tenant(change.tenant)
        self._observe_size(change.tenant)

    # --- internals ---

    def _languages_to_search(
        self, collection: Collection[ChunkEntry], request: SearchRequest
    ) -> tuple[str, ...] | None:
        """The question's language when the knowledge base has more than one; else every language."""
        if request.language is not None:
            return (request.language,)
        # A CSV may tag passages with any code; the detector chooses only among those it knows.
        available = tuple(language for language in collection.languages if language in self._detector.known)
        if len(available) < 2:
            return None
        return (self._detector.detect(request.text, available),)

    async def _embed_missing(self, tenant: str, passages: Sequence[Passage]) -> int:
        """Embed and store the passages with no vector of this model yet; how many were embedded."""
        if self._encoder is None:
            return 0
        by_hash = {passage_hash(p): p for p in passages}
        known = await self._store.known_vectors(tenant, self._encoder.model, by_hash.keys())
        missing = [(h, p) for h, p in by_hash.items() if h not in known]
        batch = self._settings.batch_size
        for start in range(0, len(missing), batch):
            part = missing[start : start + batch]
            vectors = await self._encoder.passages([p.text for _, p in part])
            await self._store.save_vectors(tenant, self._encoder.model, [h for h, _ in part], vectors)
            # Counted here, not per request: an embed request, a commit and the backfill all run the model.
            metrics.KNOWLEDGE_CHUNKS_EMBEDDED.labels(tenant, "knowledge").inc(len(part))
        return len(missing)

    async def _document_changed(self, tenant: str, name: str, at: datetime) -> None:
        change = knowledge_pb2.KnowledgeChange(tenant=tenant, document=name)
        await self.apply(catalogue.DOCUMENT_CHANGED, change)
        await self._announce(tenant, catalogue.DOCUMENT_CHANGED, change, f"document:{tenant}:{name}:{at.isoformat()}")

    async def _reload_document(self, tenant: str, name: str) -> None:
        # Read all, then swap with no await between: a search never sees the document half loaded.
        # Reloads of a tenant take turns (a replica's own change and its echo from ZF_KNOWLEDGE come
        # together), so the one that read SQL last is the one that stays.
        async with self._reloading[tenant]:
            version = (await self._store.document_versions(tenant, name)).get(name)
            chunks = [chunk async for chunk in self._store.chunks(tenant, self.model, document=name)]
            index = self.index_of(tenant)
            for key in index.documents.pop(name, set()):
                index.knowledge.remove(key)
            if version is None:
                index.versions.pop(name, None)
            else:
                index.versions[name] = version
            for chunk in chunks:
                self._put_chunk(index, ChunkEntry(chunk.document, chunk.position, chunk.passage), chunk.vector)

    def _put_chunk(self, index: TenantIndex, entry: ChunkEntry, vector: Vector | None) -> None:
        key = chunk_key(entry.document, entry.position)
        terms = self._analyzer.terms(entry.passage.text, entry.passage.language)
        index.knowledge.put(key, entry, entry.passage.language, terms, vector)
        index.documents.setdefault(entry.document, set()).add(key)

    def _put_turn(self, index: TenantIndex, turn: StoredTurn) -> None:
        terms = self._analyzer.terms(turn.customer_text, turn.language)
        index.turns.put(str(turn.id), turn.id, turn.language, terms, turn.vector)

    async def _turn_hits(self, tenant: str, index: TenantIndex, found: list[Scored[int]]) -> list[Hit]:
        """Hits read back from SQL: a turn erased or expired since it was indexed is dropped here."""
        rows = {turn.id: turn for turn in await self._store.turns(tenant, None, [hit.payload for hit in found])}
        hits = []
        for hit in found:
            turn = rows.get(hit.payload)
            if turn is None:
                index.turns.remove(str(hit.payload))
                continue
            hits.append(
                Hit(
                    score=hit.score,
                    similarity=hit.similarity,
                    lexical=hit.lexical,
                    title=turn.customer_text,
                    body=turn.answer_text,
                    language=turn.language,
                    turn_id=turn.turn_id,
                    contact=turn.contact,
                    at=turn.at,
                )
            )
        return hits

    def _observe_size(self, tenant: str) -> None:
        index = self._indexes.get(tenant)
        if index is None:
            return
        metrics.KNOWLEDGE_ENTRIES.labels(tenant, "knowledge").set(len(index.knowledge))
        metrics.KNOWLEDGE_ENTRIES.labels(tenant, "turns").set(len(index.turns))
