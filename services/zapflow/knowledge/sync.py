"""The knowledge bases tenant specs declare (inline FAQ entries, folders, mounted ConfigMaps), kept in
step with the registry: at start, on every change of a tenant, and every few minutes (a folder's
files change without the registry knowing).

Spec documents are named `spec:faq`, `spec:folder:<folder>/<file>` and `spec:configmap:<name>/<file>`
and have origin `spec`: a sync removes spec documents the spec no longer names, and never touches
what `zapflow kb ingest` added. A source that cannot be read is logged with its reason and keeps its
last good version. One replica syncs a tenant at a time (a Redis lease), the others skip it.

The ConfigMaps of a tenant file are mounted under the knowledge directory. Those of a tenant the
operator wrote (a BotTenant resource, its uid in the entry's metadata) are the operator's: it reads
them from the Kubernetes API (operator/knowledge.py), and this sync neither reads nor removes them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from zapflow.knowledge.documents import (
    CONFIGMAP_PREFIX,
    ParsedDocument,
    UnreadableDocument,
    expand,
    inline_document,
    read_document,
)
from zapflow.knowledge.messages import SPEC_PREFIX, ListRequest, RemoveRequest
from zapflow.knowledge.service import Knowledge
from zapflow.knowledge.settings import EmbeddingSettings
from zapflow.knowledge.text import LanguageDetector
from zapflow.platform import keys
from zapflow.platform.logging import get_logger
from zapflow.tenants.model import BotTenant
from zapflow.tenants.registry import TenantRegistry

log = get_logger(__name__)

FAQ_DOCUMENT = f"{SPEC_PREFIX}faq"
LEASE_S = 600


@dataclass(frozen=True)
class Problem:
    """A source that could not be read: its documents (a name, or a prefix ending in /) stay as they were."""

    keeps: str
    reason: str

    def covers(self, document: str) -> bool:
        return document.startswith(self.keeps) if self.keeps.endswith("/") else document == self.keeps


def spec_documents(
    tenant: BotTenant, knowledge_dir: Path, detector: LanguageDetector
) -> tuple[list[ParsedDocument], list[Problem]]:
    """The documents the spec names, read; and the sources that could not be read, with why."""
    spec = tenant.spec.knowledge
    documents: list[ParsedDocument] = []
    problems: list[Problem] = []
    if spec.faq:
        documents.append(inline_document(FAQ_DOCUMENT, spec.faq, spec.language, detector))
    sources = [(Path(folder), f"{SPEC_PREFIX}folder:{folder.rstrip('/')}") for folder in spec.folders]
    if tenant.owner_uid is None:
        sources += [(knowledge_dir / name, f"{CONFIGMAP_PREFIX}{name}") for name in spec.config_maps]
    for folder, prefix in sources:
        try:
            files = expand([folder])
        except UnreadableDocument as problem:
            problems.append(Problem(f"{prefix}/", str(problem)))
            continue
        for path, name in files:
            try:
                documents.append(read_document(path, f"{prefix}/{name}", spec.language, detector))
            except UnreadableDocument as problem:
                problems.append(Problem(f"{prefix}/{name}", str(problem)))
    return documents, problems


def operator_document(tenant: BotTenant, document: str) -> bool:
    """Whether the operator keeps this document: one of a BotTenant's ConfigMaps."""
    return tenant.owner_uid is not None and document.startswith(CONFIGMAP_PREFIX)


class SpecSync:
    def __init__(
        self, knowledge: Knowledge, registry: TenantRegistry, redis: Redis, settings: EmbeddingSettings
    ) -> None:
        self._knowledge = knowledge
        self._registry = registry
        self._redis = redis
        self._knowledge_dir = Path(settings.knowledge_dir)
        self._interval_s = settings.spec_sync_interval_s
        # Made on the first spec that declares knowledge, in the reading thread: loading it takes about a
        # second, which would otherwise hold up the event loop at every start.
        self._detector: LanguageDetector | None = None
        self._pending: asyncio.Queue[str] = asyncio.Queue()
        registry.on_change(lambda name, _tenant: self._pending.put_nowait(name))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            for tenant in self._registry.all():
                await self.sync(tenant.name)
            # Only the wait for a change is timed: a sync cut off halfway could leave a document
            # written to SQL but never announced to the other replicas.
            due = loop.time() + self._interval_s
            while (left := due - loop.time()) > 0:
                try:
                    async with asyncio.timeout(left):
                        name = await self._pending.get()
                except TimeoutError:
                    break
                await self.sync(name)

    async def sync(self, name: str) -> None:
        tenant = self._registry.by_name(name)
        if tenant is None or not self._knowledge.serves(name):
            return
        lease = keys.knowledge_sync_key(name)
        if not await self._redis.set(lease, "1", nx=True, ex=LEASE_S):
            return
        try:
            await self._sync(tenant)
        except Exception:
            log.exception("spec knowledge sync failed", tenant=name)
        finally:
            await self._redis.delete(lease)

    async def _sync(self, tenant: BotTenant) -> None:
        documents: list[ParsedDocument] = []
        problems: list[Problem] = []
        spec = tenant.spec.knowledge
        if spec.faq or spec.folders or (spec.config_maps and tenant.owner_uid is None):
            # Reading files (and PDFs) blocks: off the event loop.
            documents, problems = await asyncio.to_thread(self._read, tenant)
        for problem in problems:
            log.warning("spec knowledge source not ingested", tenant=tenant.name, problem=problem.reason)
        for document in documents:
            await self._knowledge.commit(
                tenant.name,
                document.commit_request("spec"),
            )
        wanted = {document.name for document in documents}
        present = await self._knowledge.list_documents(tenant.name, ListRequest(origin="spec"))
        # A source that could not be read keeps its documents: a missing mount must not empty the base.
        stale = [
            d.name
            for d in present.documents
            if d.name not in wanted
            and not any(problem.covers(d.name) for problem in problems)
            and not operator_document(tenant, d.name)
        ]
        if stale:
            await self._knowledge.remove_documents(tenant.name, RemoveRequest(names=stale))

    def _read(self, tenant: BotTenant) -> tuple[list[ParsedDocument], list[Problem]]:
        """The spec's documents (in a thread; one sync at a time, so the detector is never shared)."""
        if self._detector is None:
            self._detector = LanguageDetector()
        return spec_documents(tenant, self._knowledge_dir, self._detector)
