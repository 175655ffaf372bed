"""A BotTenant's knowledge ConfigMaps, without kopf: a ConfigMap's data into documents, what a sync sends and
removes, the KnowledgeSynced condition; then KnowledgeSync against a real embedding service, and the
embedding service's spec sync leaving an operator-managed tenant's ConfigMaps to the operator."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.knowledge import conftest as knowledge_fixtures
from tests.knowledge import test_spec_sync
from tests.knowledge.conftest import Embedding
from tests.knowledge.test_spec_sync import SyncFinished
from tests.support.knowledge import document, passage
from tests.support.platform import eventually
from tests.support.tenants import tenant_document
from tests.unit.test_documents import pdf_bytes
from zapflow.knowledge.client import KnowledgeClient, KnowledgeError
from zapflow.knowledge.documents import parse_document, read_document
from zapflow.knowledge.messages import DocumentInfo, ListRequest, SearchRequest
from zapflow.knowledge.text import LanguageDetector
from zapflow.operator.knowledge import (
    CONFIGMAP_MISSING,
    DOCUMENT_REFUSED,
    KNOWLEDGE_UNAVAILABLE,
    ConfigMapFiles,
    Key,
    KnowledgeSync,
    configmap_files,
    failed,
    ingested,
    missing_configmaps,
    parse,
    plan,
)
from zapflow.operator.status import (
    KNOWLEDGE_SYNCED,
    READY,
    REGISTRY_SYNCED,
    SECRETS_RESOLVED,
    WORKLOAD_SYNCED,
    Condition,
    condition_patch,
    merge,
    ready,
)
from zapflow.tenants.files import parse_tenant
from zapflow.tenants.model import BotTenant
from zapflow.tenants.registry import TenantRegistry

embedding_service = knowledge_fixtures.embedding_service
knowledge = knowledge_fixtures.knowledge
sync_finished = test_spec_sync.sync_finished

NAMESPACE = "shop"
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
GUIDE = "# Delivery\n\nWe deliver in 3 to 5 working days.\n\n# Returns\n\nReturns are free within 7 days.\n"
FAQ = "question,answer\nDo you sell gift cards?,Yes, from R$ 50.\n"
POLICY = "# Privacy\n\nWe never share your phone number.\n"


@pytest.fixture(scope="module")
def detector() -> LanguageDetector:
    return LanguageDetector()


def files(**texts: str) -> dict[str, bytes]:
    """A ConfigMap's files from keyword arguments (`faq_csv` is the key faq.csv)."""
    return {key.replace("_", "."): text.encode() for key, text in texts.items()}


def stored(name: str, data: bytes, chunks: int = 1) -> DocumentInfo:
    return DocumentInfo(
        name=name,
        kind="markdown",
        origin="spec",
        chunks=chunks,
        content_hash=hashlib.sha256(data).hexdigest(),
        updated_at=T0,
    )


def bot_tenant(config_maps: list[str], name: str | None = None, **knowledge_spec: Any) -> BotTenant:
    """A tenant as the operator writes it: its resource's namespace and uid in the metadata."""
    document = tenant_document(spec={"knowledge": {"configMaps": config_maps, "language": "en", **knowledge_spec}})
    document["metadata"] |= {"namespace": NAMESPACE, "uid": str(uuid.uuid4())} | ({"name": name} if name else {})
    return parse_tenant(document)


def held(found: Mapping[str, ConfigMapFiles]) -> Any:
    """What the operator's index would hold: these ConfigMaps, in the test's namespace."""
    return lambda namespace, name: found.get(name) if namespace == NAMESPACE else None


# --- a ConfigMap's data ---


def test_data_is_utf8_text_and_binary_data_is_decoded_from_base64() -> None:
    pdf = pdf_bytes("The Lumen lamp costs R$ 189.")
    body = {
        "data": {"guide.md": "# Preço\n\nÀ vista."},
        "binaryData": {"catalogue.pdf": base64.b64encode(pdf).decode()},
    }

    assert configmap_files(body) == {"guide.md": "# Preço\n\nÀ vista.".encode(), "catalogue.pdf": pdf}
    assert configmap_files({}) == {}


def test_a_key_parses_to_the_document_the_same_mounted_file_gives(tmp_path: Path, detector: LanguageDetector) -> None:
    # A tenant moved from a mounted ConfigMap to the operator keeps its vectors: same passages, same hash.
    (tmp_path / "guide.md").write_text(GUIDE)
    mounted = read_document(tmp_path / "guide.md", "spec:configmap:kb/guide.md", None, detector)

    key = Key(NAMESPACE, "kb", "guide.md", GUIDE.encode())
    assert parse_document(key.data, key.source, key.name, None, detector) == mounted


def test_keys_that_cannot_be_ingested_are_refused_by_configmap_and_key(detector: LanguageDetector) -> None:
    keys = [
        Key(NAMESPACE, "kb", "guide.md", GUIDE.encode()),
        Key(NAMESPACE, "kb", "faq.csv", b"question,answer\nDo you deliver?,\n"),
        Key(NAMESPACE, "kb", "notes.json", b"{}"),
        Key(NAMESPACE, "kb", "scan.pdf", b"%PDF-1.4 not really"),
    ]

    parsed, refused = parse(keys, "en", detector)

    assert [(key.key, document.name) for key, document in parsed] == [("guide.md", "spec:configmap:kb/guide.md")]
    assert refused[0] == "ConfigMap shop/kb/faq.csv: row 2 has no answer"
    assert refused[1] == "ConfigMap shop/kb/notes.json: not a Markdown, text, CSV or PDF file (by its extension)"
    assert refused[2].startswith("ConfigMap shop/kb/scan.pdf: not a readable PDF")


# --- what a sync sends and removes ---


def test_only_keys_whose_bytes_the_knowledge_base_lacks_are_sent() -> None:
    present = [stored("spec:configmap:kb/guide.md", GUIDE.encode(), 2), stored("spec:configmap:kb/faq.csv", b"old")]

    work = plan(NAMESPACE, ["kb"], {"kb": files(guide_md=GUIDE, faq_csv=FAQ, policy_md=POLICY)}, present)

    assert sorted(key.name for key in work.changed) == ["spec:configmap:kb/faq.csv", "spec:configmap:kb/policy.md"]
    assert work.stale == []


def test_documents_of_removed_keys_and_configmaps_no_longer_named_go_and_a_missing_configmap_keeps_its_own() -> None:
    present = [
        stored("spec:configmap:kb/guide.md", GUIDE.encode()),
        stored("spec:configmap:kb/old.md", b"gone from the ConfigMap"),
        stored("spec:configmap:unnamed/a.md", b"its ConfigMap left the spec"),
        stored("spec:configmap:deleted/b.md", b"its ConfigMap is missing"),
        stored("spec:faq", b"the spec sync's"),
        stored("manual.md", b"zapflow kb ingest's"),
    ]

    work = plan(NAMESPACE, ["kb", "deleted"], {"kb": files(guide_md=GUIDE)}, present)

    assert work.changed == []
    assert work.stale == ["spec:configmap:kb/old.md", "spec:configmap:unnamed/a.md"]


def test_a_spec_without_configmaps_removes_every_configmap_document() -> None:
    present = [stored("spec:configmap:kb/guide.md", GUIDE.encode()), stored("spec:faq", b"faq")]

    assert plan(NAMESPACE, [], {}, present).stale == ["spec:configmap:kb/guide.md"]


# --- the condition ---


def test_the_conditions_say_what_was_ingested_and_what_to_do() -> None:
    assert ingested(["a", "b"], 3, 12) == Condition(
        KNOWLEDGE_SYNCED, True, "Ingested", "3 documents from ConfigMaps a, b; 12 passages"
    )
    assert ingested(["a"], 1, 1).message == "1 document from ConfigMap a; 1 passage"
    assert ingested([], 0, 0) == Condition(
        KNOWLEDGE_SYNCED, True, "NoConfigMaps", "the spec names no knowledge ConfigMaps"
    )
    missing = missing_configmaps(NAMESPACE, ["acme-kb"])
    assert (missing.status, missing.reason) == (False, CONFIGMAP_MISSING)
    assert "ConfigMap shop/acme-kb: no such ConfigMap labelled zapflow.io/knowledge=true" in missing.message
    assert "kubectl -n shop label configmap acme-kb zapflow.io/knowledge=true" in missing.message


def test_an_unreachable_service_is_tried_again_and_a_refusal_is_the_services_message() -> None:
    unavailable = failed(KnowledgeError("unavailable", "no embedding service serves tenant acme"), "ConfigMap x")
    assert (unavailable.status, unavailable.reason) == (False, KNOWLEDGE_UNAVAILABLE)
    assert unavailable.message == "ConfigMap x: no embedding service serves tenant acme"

    quota = failed(KnowledgeError("quota", "tenant acme would hold 9 chunks; its quota is 3"), "ConfigMap x")
    assert (quota.status, quota.reason) == (False, DOCUMENT_REFUSED)
    assert quota.message.startswith("ConfigMap x: tenant acme would hold 9 chunks; its quota is 3; ")


def test_ready_takes_the_knowledge_condition_into_account() -> None:
    parts = [
        Condition(SECRETS_RESOLVED, True, "Found", "ok"),
        Condition(REGISTRY_SYNCED, True, "Written", "ok"),
        Condition(WORKLOAD_SYNCED, True, "Shared", "ok"),
    ]
    missing = missing_configmaps(NAMESPACE, ["acme-kb"])

    assert ready(parts) == Condition(READY, False, "Pending", f"{KNOWLEDGE_SYNCED} has not been checked yet")
    assert ready([*parts, missing]) == Condition(READY, False, CONFIGMAP_MISSING, missing.message)
    assert ready([*parts, ingested(["acme-kb"], 1, 2)]).status


def test_a_condition_checked_between_syncs_patches_it_and_ready_only_when_they_change() -> None:
    parts = [
        Condition(SECRETS_RESOLVED, True, "Found", "ok"),
        Condition(REGISTRY_SYNCED, True, "Written", "ok"),
        Condition(WORKLOAD_SYNCED, True, "Shared", "ok"),
    ]
    good = ingested(["acme-kb"], 1, 2)
    status = {"conditions": merge([], [*parts, good, ready([*parts, good])], T0)}

    assert condition_patch(status, good, T0 + timedelta(minutes=5)) == {}

    broken = Condition(KNOWLEDGE_SYNCED, False, DOCUMENT_REFUSED, "ConfigMap shop/acme-kb/faq.csv: row 2 has no answer")
    patched = condition_patch(status, broken, T0 + timedelta(minutes=5))["conditions"]
    by_type = {condition["type"]: condition for condition in patched}
    assert (by_type[READY]["status"], by_type[READY]["reason"]) == ("False", DOCUMENT_REFUSED)
    assert by_type[KNOWLEDGE_SYNCED]["lastTransitionTime"] == "2026-01-01T12:05:00Z"
    assert by_type[SECRETS_RESOLVED] == status["conditions"][1]


# --- against a real embedding service ---


async def configmap_documents(client: KnowledgeClient, tenant: str) -> dict[str, DocumentInfo]:
    listed = await client.list_documents(tenant, ListRequest(origin="spec"))
    return {d.name: d for d in listed.documents}


async def test_configmaps_are_ingested_kept_in_step_and_removed(
    embedding_service: Embedding, knowledge: KnowledgeClient
) -> None:
    tenant = bot_tenant(["kb", "privacy"])
    pdf = pdf_bytes("The Lumen lamp costs R$ 189.")
    found: dict[str, ConfigMapFiles] = {
        "kb": files(guide_md=GUIDE, faq_csv=FAQ) | {"catalogue.pdf": pdf},
        "privacy": files(policy_md=POLICY),
    }
    sync = KnowledgeSync(knowledge, max_payload=1024 * 1024)
    async with embedding_service(backend="none"):
        manual = (
            await knowledge.commit(tenant.name, document("manual.md", [passage("Press the red button.")]))
        ).document

        first = await sync.sync(tenant, NAMESPACE, held(found))

        assert first == Condition(
            KNOWLEDGE_SYNCED, True, "Ingested", "4 documents from ConfigMaps kb, privacy; 5 passages"
        )
        documents = await configmap_documents(knowledge, tenant.name)
        assert sorted(documents) == [
            "spec:configmap:kb/catalogue.pdf",
            "spec:configmap:kb/faq.csv",
            "spec:configmap:kb/guide.md",
            "spec:configmap:privacy/policy.md",
        ]
        assert documents["spec:configmap:kb/catalogue.pdf"].kind == "pdf"
        hit = (await knowledge.search(tenant.name, SearchRequest(text="do you share my phone number?"))).hits[0]
        assert hit.document == "spec:configmap:privacy/policy.md"

        # The same data again: nothing is written.
        assert await sync.sync(tenant, NAMESPACE, held(found)) == first
        assert await configmap_documents(knowledge, tenant.name) == documents

        # An edited key, a removed key, a ConfigMap no longer named.
        edited = bot_tenant(["kb"], tenant.name)
        edited_files = {"kb": files(guide_md=GUIDE.replace("3 to 5", "2"), faq_csv=FAQ)}
        assert (await sync.sync(edited, NAMESPACE, held(edited_files))).message == (
            "2 documents from ConfigMap kb; 3 passages"
        )
        after = await configmap_documents(knowledge, edited.name)
        assert sorted(after) == ["spec:configmap:kb/faq.csv", "spec:configmap:kb/guide.md"]
        assert after["spec:configmap:kb/faq.csv"] == documents["spec:configmap:kb/faq.csv"]
        assert after["spec:configmap:kb/guide.md"].content_hash != documents["spec:configmap:kb/guide.md"].content_hash

        # No ConfigMaps at all: their documents go, zapflow kb ingest's stay.
        assert (await sync.sync(bot_tenant([], tenant.name), NAMESPACE, held({}))).reason == "NoConfigMaps"
        listed = await knowledge.list_documents(tenant.name)
        assert listed.documents == [manual]


async def test_a_missing_configmap_keeps_its_documents_and_a_broken_key_its_last_version(
    embedding_service: Embedding, knowledge: KnowledgeClient
) -> None:
    tenant = bot_tenant(["kb", "later"])
    sync = KnowledgeSync(knowledge, max_payload=1024 * 1024)
    async with embedding_service(backend="none"):
        missing = await sync.sync(tenant, NAMESPACE, held({"kb": files(faq_csv=FAQ)}))
        assert missing.reason == CONFIGMAP_MISSING
        assert "ConfigMap shop/later" in missing.message
        assert sorted(await configmap_documents(knowledge, tenant.name)) == ["spec:configmap:kb/faq.csv"]

        gone = await sync.sync(tenant, NAMESPACE, held({}))
        assert gone.reason == CONFIGMAP_MISSING
        assert sorted(await configmap_documents(knowledge, tenant.name)) == ["spec:configmap:kb/faq.csv"]

        broken = {"kb": files(faq_csv="question,answer\nDo you deliver?,\n", guide_md=GUIDE), "later": {}}
        refused = await sync.sync(tenant, NAMESPACE, held(broken))
        assert refused.reason == DOCUMENT_REFUSED
        assert refused.message.startswith("ConfigMap shop/kb/faq.csv: row 2 has no answer; the knowledge base keeps")
        documents = await configmap_documents(knowledge, tenant.name)
        assert sorted(documents) == ["spec:configmap:kb/faq.csv", "spec:configmap:kb/guide.md"]
        assert documents["spec:configmap:kb/faq.csv"].content_hash == hashlib.sha256(FAQ.encode()).hexdigest()


async def test_past_the_quota_nothing_is_ingested_and_the_condition_says_why(
    embedding_service: Embedding, knowledge: KnowledgeClient
) -> None:
    tenant = bot_tenant(["kb"])
    sync = KnowledgeSync(knowledge, max_payload=1024 * 1024)
    async with embedding_service(backend="none", max_chunks_per_tenant=2):
        refused = await sync.sync(tenant, NAMESPACE, held({"kb": files(guide_md=GUIDE, faq_csv=FAQ)}))

        assert refused.reason == DOCUMENT_REFUSED
        assert f"tenant {tenant.name} would hold 3 chunks; its quota is 2" in refused.message
        assert await configmap_documents(knowledge, tenant.name) == {}


async def test_without_an_embedding_service_configmaps_wait_and_a_tenant_without_any_does_not(
    knowledge: KnowledgeClient,
) -> None:
    sync = KnowledgeSync(knowledge, max_payload=1024 * 1024)

    waiting = await sync.sync(bot_tenant(["kb"]), NAMESPACE, held({"kb": files(faq_csv=FAQ)}))
    assert waiting.reason == KNOWLEDGE_UNAVAILABLE
    assert waiting.message.startswith("the tenant's ConfigMaps are not ingested yet: no embedding service serves")

    assert (await sync.sync(bot_tenant([]), NAMESPACE, held({}))).reason == "NoConfigMaps"


async def test_the_spec_sync_leaves_an_operator_managed_tenants_configmaps_to_the_operator(
    embedding_service: Embedding,
    knowledge: KnowledgeClient,
    registry: TenantRegistry,
    sync_finished: SyncFinished,
    tmp_path: Path,
) -> None:
    mounted = tmp_path / "configmaps" / "kb"
    mounted.mkdir(parents=True)
    (mounted / "policy.md").write_text(POLICY)
    faq = [{"question": "Do you deliver on Saturdays?", "answer": "Yes, Monday to Saturday."}]
    tenant = bot_tenant(["kb"], faq=faq)
    sync = KnowledgeSync(knowledge, max_payload=1024 * 1024)
    async with embedding_service(backend="none", knowledge_dir=str(tmp_path / "configmaps")):
        await sync.sync(tenant, NAMESPACE, held({"kb": files(guide_md=GUIDE)}))
        await registry.put(tenant)

        async def faq_ingested() -> bool:
            return "spec:faq" in await configmap_documents(knowledge, tenant.name)

        await eventually(faq_ingested, what="the spec sync of the FAQ")
        await sync_finished(tenant.name)

        # The FAQ is the spec sync's; the mounted ConfigMap is neither read nor does it replace the operator's.
        assert sorted(await configmap_documents(knowledge, tenant.name)) == ["spec:configmap:kb/guide.md", "spec:faq"]
