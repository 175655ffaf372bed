"""A BotTenant's knowledge ConfigMaps, ingested into its knowledge base (the KnowledgeSynced condition).

The ConfigMaps `spec.knowledge.configMaps` names are read from the Kubernetes API, not mounted: a
mount would change the embedding Deployment for every tenant. The operator keeps the ConfigMaps
labelled `zapflow.io/knowledge: "true"` in a kopf index (only those: not every ConfigMap of the
namespace), parses each key with the knowledge package's parser and embeds and commits it through
the embedding service as `zapflow kb ingest` does. Documents are `spec:configmap:<configmap>/<key>`,
origin `spec`; the embedding service's spec sync leaves them to the operator (knowledge/sync.py).

A key whose bytes the knowledge base holds already is not parsed or sent again, and the documents of
keys and ConfigMaps the spec no longer names are removed. A ConfigMap that is missing, and a key that
cannot be ingested, keep their last documents: deleting or unlabelling a ConfigMap by mistake, or a
broken edit, never empties a knowledge base.
"""

from __future__ import annotations

import asyncio
import base64
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zapflow.knowledge.client import KnowledgeClient, KnowledgeError
from zapflow.knowledge.documents import (
    CONFIGMAP_PREFIX,
    ParsedDocument,
    UnreadableDocument,
    file_hash,
    parse_document,
)
from zapflow.knowledge.ingest import Source, check_fits, ingest
from zapflow.knowledge.messages import DocumentInfo, ListReply, RemoveRequest
from zapflow.knowledge.text import LanguageDetector
from zapflow.operator.status import KNOWLEDGE_SYNCED, Condition
from zapflow.platform.logging import get_logger
from zapflow.tenants.model import BotTenant

log = get_logger(__name__)

KNOWLEDGE_LABEL = "zapflow.io/knowledge"
KNOWLEDGE_LABEL_VALUE = "true"
# The reasons the handlers act on: a missing ConfigMap and an unreachable service are tried again.
CONFIGMAP_MISSING = "ConfigMapMissing"
KNOWLEDGE_UNAVAILABLE = "KnowledgeUnavailable"
DOCUMENT_REFUSED = "DocumentRefused"

# A ConfigMap's keys and their bytes.
ConfigMapFiles = Mapping[str, bytes]
# The files of a labelled ConfigMap by (namespace, name); None when there is none, or it has no label.
ConfigMapsOf = Callable[[str, str], ConfigMapFiles | None]


def configmap_content(body: Mapping[str, Any]) -> dict[str, str]:
    """What a ConfigMap holds as the API gives it: `data` (text) and `binaryData` (base64) by key."""
    return dict(body.get("data") or {}) | dict(body.get("binaryData") or {})


def configmap_files(body: Mapping[str, Any]) -> dict[str, bytes]:
    """A ConfigMap's keys as file contents: `data` as UTF-8 text, `binaryData` (a PDF) decoded."""
    files = {key: str(text).encode() for key, text in (body.get("data") or {}).items()}
    files |= {key: base64.b64decode(str(value)) for key, value in (body.get("binaryData") or {}).items()}
    return files


def document_name(configmap: str, key: str) -> str:
    return f"{CONFIGMAP_PREFIX}{configmap}/{key}"


def configmap_of(document: str) -> str | None:
    """The ConfigMap a document came from; None for any other document."""
    if not document.startswith(CONFIGMAP_PREFIX):
        return None
    return document.removeprefix(CONFIGMAP_PREFIX).partition("/")[0]


@dataclass(frozen=True)
class Key:
    """One key of a ConfigMap, as a document to ingest."""

    namespace: str
    configmap: str
    key: str
    data: bytes

    @property
    def name(self) -> str:
        return document_name(self.configmap, self.key)

    @property
    def source(self) -> Path:
        """How messages name it (never a file on disk): `<namespace>/<configmap>/<key>`."""
        return Path(self.namespace, self.configmap, self.key)


@dataclass(frozen=True)
class Plan:
    """What a sync sends: the keys whose bytes the knowledge base lacks, and the documents to remove."""

    changed: list[Key]
    stale: list[str]


def plan(
    namespace: str, named: Sequence[str], found: Mapping[str, ConfigMapFiles], present: Sequence[DocumentInfo]
) -> Plan:
    """Compare the named ConfigMaps (`found`: those that exist) with the documents the knowledge base holds.

    A document stays when its ConfigMap is named but missing; one of a key no longer there, or of a
    ConfigMap no longer named, goes.
    """
    stored = {d.name: d.content_hash for d in present if configmap_of(d.name) is not None}
    keys = [
        Key(namespace, configmap, key, data) for configmap in named for key, data in found.get(configmap, {}).items()
    ]
    wanted = {key.name for key in keys}
    changed = [key for key in keys if stored.get(key.name) != file_hash(key.data)]
    stale = [
        name
        for name in stored
        if name not in wanted and (configmap_of(name) not in named or configmap_of(name) in found)
    ]
    return Plan(changed, sorted(stale))


def parse(
    keys: Sequence[Key], language: str | None, detector: LanguageDetector
) -> tuple[list[tuple[Key, ParsedDocument]], list[str]]:
    """The keys' documents, and why each key that cannot be ingested cannot (blocking: call it in a thread)."""
    parsed: list[tuple[Key, ParsedDocument]] = []
    refused: list[str] = []
    for key in keys:
        try:
            parsed.append((key, parse_document(key.data, key.source, key.name, language, detector)))
        except UnreadableDocument as problem:
            refused.append(f"ConfigMap {problem}")
    return parsed, refused


def missing_configmaps(namespace: str, missing: Sequence[str]) -> Condition:
    """ConfigMapMissing: which ConfigMaps, and the command that makes an existing one count."""
    named = ", ".join(f"{namespace}/{name}" for name in missing)
    commands = "; ".join(
        f"kubectl -n {namespace} label configmap {name} {KNOWLEDGE_LABEL}={KNOWLEDGE_LABEL_VALUE}" for name in missing
    )
    return Condition(
        KNOWLEDGE_SYNCED,
        False,
        CONFIGMAP_MISSING,
        f"ConfigMap {named}: no such ConfigMap labelled {KNOWLEDGE_LABEL}={KNOWLEDGE_LABEL_VALUE}; create it with "
        f"the label, or label it ({commands})",
    )


def ingested(named: Sequence[str], documents: int, passages: int) -> Condition:
    if not named:
        return Condition(KNOWLEDGE_SYNCED, True, "NoConfigMaps", "the spec names no knowledge ConfigMaps")
    return Condition(
        KNOWLEDGE_SYNCED,
        True,
        "Ingested",
        f"{counted(documents, 'document')} from {'ConfigMap' if len(named) == 1 else 'ConfigMaps'} "
        f"{', '.join(named)}; {counted(passages, 'passage')}",
    )


def counted(number: int, thing: str) -> str:
    return f"{number} {thing}" if number == 1 else f"{number} {thing}s"


def refused(reasons: Sequence[str]) -> Condition:
    return Condition(
        KNOWLEDGE_SYNCED,
        False,
        DOCUMENT_REFUSED,
        f"{'; '.join(reasons)}; the knowledge base keeps the last version it took (fix the ConfigMap)",
    )


def failed(error: KnowledgeError, what: str) -> Condition:
    """A request the embedding service refused (quota, size) or that no service took (tried again)."""
    if error.code in ("unavailable", "failed"):
        return Condition(KNOWLEDGE_SYNCED, False, KNOWLEDGE_UNAVAILABLE, f"{what}: {error}")
    return refused([f"{what}: {error}"])


class KnowledgeSync:
    """Brings tenants' knowledge bases in line with their ConfigMaps, one sync of a tenant at a time."""

    def __init__(self, client: KnowledgeClient, max_payload: int) -> None:
        self._client = client
        self._max_payload = max_payload
        self._tenants: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Made on the first ConfigMap to parse, in the parsing thread (loading it takes about a second);
        # one parse at a time, so it is never shared between threads.
        self._detector: LanguageDetector | None = None
        self._parsing = asyncio.Lock()

    async def sync(self, tenant: BotTenant, namespace: str, configmaps_of: ConfigMapsOf) -> Condition:
        """KnowledgeSynced after ingesting what changed in the tenant's ConfigMaps and removing what went."""
        named = list(dict.fromkeys(tenant.spec.knowledge.config_maps))
        found = {name: files for name in named if (files := configmaps_of(namespace, name)) is not None}
        async with self._tenants[tenant.name]:
            try:
                condition = await self._sync(tenant, namespace, named, found)
            except KnowledgeError as error:
                if not named:
                    # A tenant without ConfigMaps does not need the service; any document of ConfigMaps it
                    # named before is removed by a later sync (the drift timer's) that reaches it.
                    log.debug("cannot clear a tenant's ConfigMap documents", tenant=tenant.name, error=str(error))
                    return ingested(named, 0, 0)
                return failed(error, "the tenant's ConfigMaps are not ingested yet")
        missing = [name for name in named if name not in found]
        return missing_configmaps(namespace, missing) if missing and condition.status else condition

    async def _sync(
        self, tenant: BotTenant, namespace: str, named: list[str], found: Mapping[str, ConfigMapFiles]
    ) -> Condition:
        listing = await self._client.list_documents(tenant.name)
        work = plan(namespace, named, found, listing.documents)
        if work.stale:
            await self._client.remove_documents(tenant.name, RemoveRequest(names=work.stale))
            log.info("ConfigMap documents removed", tenant=tenant.name, documents=work.stale)
            listing = await self._client.list_documents(tenant.name)
        if not work.changed:
            return self._summary(named, listing, {})
        parsed, unreadable = await self._parse(work.changed, tenant.spec.knowledge.language)
        sources = [Source(key.source, document.commit_request("spec")) for key, document in parsed]
        try:
            check_fits(tenant.name, sources, listing, self._max_payload)
        except KnowledgeError as error:
            return refused([*unreadable, f"ConfigMap {error}" if error.code == "invalid" else str(error)])
        committed: dict[str, int] = {}
        try:
            async for done in ingest(self._client, tenant.name, sources, listing, lambda _: None):
                committed[done.reply.document.name] = done.reply.document.chunks
        except KnowledgeError as error:
            stopped = sources[len(committed)].path
            return failed(error, f"ConfigMap {stopped}")
        if committed:
            log.info("ConfigMap documents ingested", tenant=tenant.name, documents=sorted(committed))
        if unreadable:
            return refused(unreadable)
        return self._summary(named, listing, committed)

    @staticmethod
    def _summary(named: Sequence[str], listing: ListReply, committed: Mapping[str, int]) -> Condition:
        chunks = {d.name: d.chunks for d in listing.documents if configmap_of(d.name) in named} | dict(committed)
        return ingested(named, len(chunks), sum(chunks.values()))

    async def _parse(
        self, keys: Sequence[Key], language: str | None
    ) -> tuple[list[tuple[Key, ParsedDocument]], list[str]]:
        def parse_all() -> tuple[list[tuple[Key, ParsedDocument]], list[str]]:
            if self._detector is None:
                self._detector = LanguageDetector()
            return parse(keys, language, self._detector)

        async with self._parsing:
            return await asyncio.to_thread(parse_all)
