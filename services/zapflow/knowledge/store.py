"""The knowledge tables in the relational store (PostgreSQL or SQLite, one code path)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from zapflow.knowledge.encoders import Matrix, Vector
from zapflow.knowledge.messages import DocumentInfo, DocumentKind, Origin, Passage
from zapflow.knowledge.quota import require_quota
from zapflow.store.models import KnowledgeChunk, KnowledgeDocument, KnowledgeVector, TurnVector
from zapflow.store.repository import UPSERTS

# Rows read per round trip when the index is rebuilt at start.
LOAD_BATCH = 2_000


def passage_hash(passage: Passage) -> str:
    """The key of a passage's vector: what is embedded, and its language."""
    digest = hashlib.sha256()
    for part in (passage.language, passage.title, passage.body):
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def to_bytes(vector: Vector) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def from_bytes(data: bytes) -> Vector | None:
    return np.frombuffer(data, dtype="<f4").astype(np.float32) if data else None


@dataclass(frozen=True)
class StoredChunk:
    document: str
    position: int
    passage: Passage
    content_hash: str
    vector: Vector | None


@dataclass(frozen=True)
class StoredTurn:
    id: int
    turn_id: str
    contact: str
    at: datetime
    language: str
    customer_text: str
    answer_text: str
    vector: Vector | None


@dataclass(frozen=True)
class Replaced:
    document: DocumentInfo
    added: int
    removed: int
    kept: int
    unchanged: bool


class KnowledgeStore:
    def __init__(self, engine: AsyncEngine) -> None:
        upsert = UPSERTS[engine.dialect.name]
        self._engine = engine
        self._insert_vector = upsert(KnowledgeVector).on_conflict_do_nothing(
            index_elements=[KnowledgeVector.tenant, KnowledgeVector.model, KnowledgeVector.content_hash]
        )
        self._insert_turn = upsert(TurnVector).on_conflict_do_nothing(
            index_elements=[TurnVector.tenant, TurnVector.turn_id]
        )

    # --- vectors ---

    async def known_vectors(self, tenant: str, model: str, hashes: Collection[str]) -> set[str]:
        if not hashes:
            return set()
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(KnowledgeVector.content_hash).where(
                    KnowledgeVector.tenant == tenant,
                    KnowledgeVector.model == model,
                    KnowledgeVector.content_hash.in_(list(hashes)),
                )
            )
            return set(rows.scalars())

    async def save_vectors(self, tenant: str, model: str, hashes: Sequence[str], vectors: Matrix) -> None:
        now = datetime.now(UTC)
        rows = [
            {"tenant": tenant, "model": model, "content_hash": h, "vector": to_bytes(v), "created_at": now}
            for h, v in zip(hashes, vectors, strict=True)
        ]
        if rows:
            async with self._engine.begin() as conn:
                await conn.execute(self._insert_vector, rows)

    # --- documents ---

    async def chunk_count(self, tenant: str, excluding: str | None = None) -> int:
        async with self._engine.connect() as conn:
            return await _chunk_count(conn, tenant, excluding)

    async def replace_document(
        self,
        tenant: str,
        name: str,
        kind: DocumentKind,
        origin: Origin,
        content_hash: str,
        passages: Sequence[Passage],
        quota: int,
    ) -> Replaced:
        """Make the document hold exactly these passages, in one transaction."""
        hashes = [passage_hash(p) for p in passages]
        now = datetime.now(UTC)
        async with self._engine.begin() as conn:
            existing = await _document_row(conn, tenant, name)
            old_hashes = await _document_hashes(conn, tenant, name)
            if existing is not None and existing.content_hash == content_hash and old_hashes == hashes:
                languages = sorted({p.language for p in passages})
                return Replaced(_info(existing, languages), 0, 0, len(set(hashes)), unchanged=True)
            require_quota(tenant, await _chunk_count(conn, tenant, excluding=name) + len(passages), quota)
            await conn.execute(
                delete(KnowledgeChunk).where(KnowledgeChunk.tenant == tenant, KnowledgeChunk.document == name)
            )
            values = {"kind": kind, "origin": origin, "content_hash": content_hash, "chunk_count": len(passages)}
            if existing is None:
                await conn.execute(insert(KnowledgeDocument).values(tenant=tenant, name=name, updated_at=now, **values))
            else:
                await conn.execute(
                    update(KnowledgeDocument)
                    .where(KnowledgeDocument.tenant == tenant, KnowledgeDocument.name == name)
                    .values(updated_at=now, **values)
                )
            if passages:
                await conn.execute(
                    insert(KnowledgeChunk),
                    [
                        {
                            "tenant": tenant,
                            "document": name,
                            "position": position,
                            "language": p.language,
                            "title": p.title,
                            "body": p.body,
                            "content_hash": h,
                        }
                        for position, (p, h) in enumerate(zip(passages, hashes, strict=True))
                    ],
                )
            await _drop_unused_vectors(conn, tenant, set(old_hashes) - set(hashes))
            row = await _document_row(conn, tenant, name)
        assert row is not None
        old, new = set(old_hashes), set(hashes)
        info = _info(row, sorted({p.language for p in passages}))
        return Replaced(info, added=len(new - old), removed=len(old - new), kept=len(old & new), unchanged=False)

    async def remove_document(self, tenant: str, name: str) -> bool:
        async with self._engine.begin() as conn:
            old_hashes = await _document_hashes(conn, tenant, name)
            result = await conn.execute(
                delete(KnowledgeDocument).where(KnowledgeDocument.tenant == tenant, KnowledgeDocument.name == name)
            )
            # SQLite enforces the cascade only with foreign keys on (they are); both ways, be explicit.
            await conn.execute(
                delete(KnowledgeChunk).where(KnowledgeChunk.tenant == tenant, KnowledgeChunk.document == name)
            )
            await _drop_unused_vectors(conn, tenant, set(old_hashes))
            return bool(result.rowcount)

    async def documents(self, tenant: str, origin: Origin | None = None) -> list[DocumentInfo]:
        async with self._engine.connect() as conn:
            query = select(KnowledgeDocument).where(KnowledgeDocument.tenant == tenant)
            if origin is not None:
                query = query.where(KnowledgeDocument.origin == origin)
            documents = [
                KnowledgeDocument(**row._asdict()) for row in await conn.execute(query.order_by(KnowledgeDocument.name))
            ]
            languages: dict[str, list[str]] = {}
            rows = await conn.execute(
                select(KnowledgeChunk.document, KnowledgeChunk.language)
                .where(KnowledgeChunk.tenant == tenant)
                .distinct()
                .order_by(KnowledgeChunk.document, KnowledgeChunk.language)
            )
            for document, language in rows:
                languages.setdefault(document, []).append(language)
        return [_info(d, languages.get(d.name, [])) for d in documents]

    async def document(self, tenant: str, name: str) -> tuple[DocumentInfo, list[Passage]] | None:
        async with self._engine.connect() as conn:
            row = await _document_row(conn, tenant, name)
            if row is None:
                return None
            chunks = await conn.execute(
                select(KnowledgeChunk.title, KnowledgeChunk.body, KnowledgeChunk.language)
                .where(KnowledgeChunk.tenant == tenant, KnowledgeChunk.document == name)
                .order_by(KnowledgeChunk.position)
            )
            passages = [Passage(title=t, body=b, language=lang) for t, b, lang in chunks]
        return _info(row, sorted({p.language for p in passages})), passages

    async def chunks(self, tenant: str, model: str | None, document: str | None = None) -> AsyncIterator[StoredChunk]:
        """A tenant's chunks (of one document, or all) with their vectors of this model, if any."""
        query = (
            select(
                KnowledgeChunk.document,
                KnowledgeChunk.position,
                KnowledgeChunk.title,
                KnowledgeChunk.body,
                KnowledgeChunk.language,
                KnowledgeChunk.content_hash,
                KnowledgeVector.vector,
            )
            .outerjoin(
                KnowledgeVector,
                (KnowledgeVector.tenant == KnowledgeChunk.tenant)
                & (KnowledgeVector.content_hash == KnowledgeChunk.content_hash)
                & (KnowledgeVector.model == (model or "")),
            )
            .where(KnowledgeChunk.tenant == tenant)
        )
        if document is not None:
            query = query.where(KnowledgeChunk.document == document)
        async with self._engine.connect() as conn:
            result = await conn.stream(query.execution_options(yield_per=LOAD_BATCH))
            async for name, position, title, body, language, content_hash, vector in result:
                passage = Passage(title=title, body=body, language=language)
                yield StoredChunk(name, position, passage, content_hash, from_bytes(vector or b""))

    async def document_versions(self, tenant: str, name: str | None = None) -> dict[str, datetime]:
        """When each of a tenant's documents (or this one) last changed."""
        query = select(KnowledgeDocument.name, KnowledgeDocument.updated_at).where(KnowledgeDocument.tenant == tenant)
        if name is not None:
            query = query.where(KnowledgeDocument.name == name)
        async with self._engine.connect() as conn:
            return {row.name: row.updated_at for row in await conn.execute(query)}

    async def tenants(self) -> list[str]:
        """Every tenant with a knowledge base or turn vectors."""
        async with self._engine.connect() as conn:
            documents = await conn.execute(select(KnowledgeDocument.tenant).distinct())
            turns = await conn.execute(select(TurnVector.tenant).distinct())
            return sorted(set(documents.scalars()) | set(turns.scalars()))

    # --- turns ---

    async def save_turn(
        self,
        tenant: str,
        turn_id: str,
        contact: str,
        at: datetime,
        language: str,
        texts: tuple[str, str],
        model: str,
        vector: Vector | None,
    ) -> int | None:
        """Store a turn's vector; its row id, or None when the turn was stored already."""
        customer_text, answer_text = texts
        async with self._engine.begin() as conn:
            result = await conn.execute(
                self._insert_turn.values(
                    tenant=tenant,
                    turn_id=turn_id,
                    contact=contact,
                    at=at,
                    language=language,
                    customer_text=customer_text,
                    answer_text=answer_text,
                    model=model,
                    vector=to_bytes(vector) if vector is not None else b"",
                )
            )
            if not result.rowcount:
                return None
            row_id = await conn.scalar(
                select(TurnVector.id).where(TurnVector.tenant == tenant, TurnVector.turn_id == turn_id)
            )
            return int(row_id) if row_id is not None else None

    async def turns(self, tenant: str, model: str | None, ids: Collection[int] | None = None) -> list[StoredTurn]:
        """A tenant's turn rows (all, or these ids); a vector of another model counts as none."""
        query = select(TurnVector).where(TurnVector.tenant == tenant)
        if ids is not None:
            query = query.where(TurnVector.id.in_(list(ids)))
        async with self._engine.connect() as conn:
            rows = [TurnVector(**row._asdict()) for row in await conn.execute(query.order_by(TurnVector.id))]
        return [
            StoredTurn(
                r.id,
                r.turn_id,
                r.contact,
                r.at,
                r.language,
                r.customer_text,
                r.answer_text,
                from_bytes(r.vector) if r.model == model else None,
            )
            for r in rows
        ]

    async def turn_count(self, tenant: str) -> int:
        async with self._engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).where(TurnVector.tenant == tenant)) or 0)


def _info(row: KnowledgeDocument, languages: list[str]) -> DocumentInfo:
    return DocumentInfo(
        name=row.name,
        kind=row.kind,
        origin=row.origin,
        chunks=row.chunk_count,
        content_hash=row.content_hash,
        updated_at=row.updated_at,
        languages=languages,
    )


async def _document_row(conn: AsyncConnection, tenant: str, name: str) -> KnowledgeDocument | None:
    query = select(KnowledgeDocument).where(KnowledgeDocument.tenant == tenant, KnowledgeDocument.name == name)
    result = await conn.execute(query)
    row = result.one_or_none()
    return None if row is None else KnowledgeDocument(**row._asdict())


async def _chunk_count(conn: AsyncConnection, tenant: str, excluding: str | None) -> int:
    query = select(func.count()).select_from(KnowledgeChunk).where(KnowledgeChunk.tenant == tenant)
    if excluding is not None:
        query = query.where(KnowledgeChunk.document != excluding)
    return int(await conn.scalar(query) or 0)


async def _document_hashes(conn: AsyncConnection, tenant: str, name: str) -> list[str]:
    rows = await conn.execute(
        select(KnowledgeChunk.content_hash)
        .where(KnowledgeChunk.tenant == tenant, KnowledgeChunk.document == name)
        .order_by(KnowledgeChunk.position)
    )
    return list(rows.scalars())


async def _drop_unused_vectors(conn: AsyncConnection, tenant: str, hashes: set[str]) -> None:
    """Vectors of texts no chunk of the tenant holds any more (every model's): the texts are gone."""
    if not hashes:
        return
    still_used = await conn.execute(
        select(KnowledgeChunk.content_hash)
        .where(KnowledgeChunk.tenant == tenant, KnowledgeChunk.content_hash.in_(list(hashes)))
        .distinct()
    )
    unused = hashes - set(still_used.scalars())
    if unused:
        await conn.execute(
            delete(KnowledgeVector).where(
                KnowledgeVector.tenant == tenant, KnowledgeVector.content_hash.in_(list(unused))
            )
        )
