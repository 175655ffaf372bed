"""The knowledge bases tenant specs declare (inline FAQ, folders, mounted ConfigMaps) follow the
registry: ingested when a tenant names them, updated or removed when its spec changes, kept when a
source cannot be read, and never at the expense of what `zapflow kb ingest` added."""

from __future__ import annotations

import copy
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.knowledge.conftest import Embedding
from tests.support.knowledge import document, passage
from tests.support.platform import eventually
from tests.support.tenants import tenant_document
from zapflow.knowledge.client import KnowledgeClient
from zapflow.knowledge.messages import DocumentInfo, ListRequest, SearchRequest, ShowRequest
from zapflow.platform import keys
from zapflow.platform.redis import connect_redis
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.files import parse_tenant
from zapflow.tenants.model import BotTenant
from zapflow.tenants.registry import TenantRegistry

FAQ = [
    {"question": "Do you deliver on Saturdays?", "answer": "Yes, Monday to Saturday."},
    {"question": "Can I pay with Pix?", "answer": "Yes, with a 5% discount."},
]
GUIDE = "# Delivery\n\nWe deliver in 3 to 5 working days.\n\n# Returns\n\nReturns are free within 7 days.\n"
FOLDER_FAQ = "question,answer\nWhere are your stores?,In São Paulo and Campinas.\n"
POLICY = "# Privacy\n\nWe never share your phone number.\n"
SyncFinished = Callable[[str], Awaitable[None]]


class Spec:
    """A tenant document whose knowledge section a test edits and puts again."""

    def __init__(self, registry: TenantRegistry, knowledge: dict[str, Any]) -> None:
        self._registry = registry
        self._document = tenant_document(spec={"knowledge": knowledge})

    @property
    def name(self) -> str:
        return str(self._document["metadata"]["name"])

    async def put(self, **knowledge: Any) -> BotTenant:
        """Put the tenant with these knowledge fields changed."""
        self._document = copy.deepcopy(self._document)
        self._document["spec"]["knowledge"].update(knowledge)
        tenant = parse_tenant(self._document)
        await self._registry.put(tenant)
        return tenant


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "guide.md").write_text(GUIDE)
    (folder / "faq.csv").write_text(FOLDER_FAQ)
    return folder


@pytest.fixture
def knowledge_dir(tmp_path: Path) -> Path:
    mounted = tmp_path / "configmaps" / "privacy-kb"
    mounted.mkdir(parents=True)
    (mounted / "policy.md").write_text(POLICY)
    return mounted.parent


@pytest.fixture
async def sync_finished(core: CoreSettings) -> AsyncIterator[SyncFinished]:
    """Waits until no replica holds the tenant's sync lease (call it once the sync has shown an effect)."""
    redis = connect_redis(core.redis_url)

    async def wait(tenant: str) -> None:
        async def lease_released() -> bool:
            return not await redis.exists(keys.knowledge_sync_key(tenant))

        await eventually(lease_released, what="the spec sync to finish")

    yield wait
    await redis.aclose()


async def spec_documents(knowledge: KnowledgeClient, tenant: str) -> dict[str, DocumentInfo]:
    listed = await knowledge.list_documents(tenant, ListRequest(origin="spec"))
    return {d.name: d for d in listed.documents}


async def wait_for_documents(knowledge: KnowledgeClient, tenant: str, names: set[str]) -> dict[str, DocumentInfo]:
    documents: dict[str, DocumentInfo] = {}

    async def listed() -> bool:
        documents.clear()
        documents.update(await spec_documents(knowledge, tenant))
        return set(documents) == names

    await eventually(listed, what=f"the spec documents {sorted(names)}")
    return documents


async def faq_questions(knowledge: KnowledgeClient, tenant: str) -> list[str]:
    shown = await knowledge.show_document(tenant, ShowRequest(name="spec:faq"))
    return [p.title for p in shown.passages]


async def test_spec_knowledge_is_ingested_and_follows_the_spec(
    embedding_service: Embedding,
    knowledge: KnowledgeClient,
    registry: TenantRegistry,
    folder: Path,
    knowledge_dir: Path,
) -> None:
    spec = Spec(registry, {"faq": FAQ, "folders": [str(folder)], "configMaps": ["privacy-kb"], "language": "en"})
    in_folder = {f"spec:folder:{folder}/guide.md", f"spec:folder:{folder}/faq.csv"}
    async with embedding_service(backend="none", knowledge_dir=str(knowledge_dir)):
        manual = (await knowledge.commit(spec.name, document("manual.md", [passage("Press the red button.")]))).document
        await spec.put()
        documents = await wait_for_documents(
            knowledge, spec.name, {"spec:faq", "spec:configmap:privacy-kb/policy.md", *in_folder}
        )
        assert (documents["spec:faq"].kind, documents["spec:faq"].chunks) == ("inline", 2)
        assert documents[f"spec:folder:{folder}/faq.csv"].kind == "csv"
        assert documents[f"spec:folder:{folder}/guide.md"].chunks == 2
        found = await knowledge.search(spec.name, SearchRequest(text="do you share my phone number?"))
        assert found.hits[0].document == "spec:configmap:privacy-kb/policy.md"

        # The FAQ changes and the ConfigMap is no longer named.
        edited = [FAQ[0], {"question": "Do you sell gift cards?", "answer": "Yes, from R$ 50."}]
        await spec.put(faq=edited, configMaps=[])
        await wait_for_documents(knowledge, spec.name, {"spec:faq", *in_folder})

        async def faq_edited() -> bool:
            return await faq_questions(knowledge, spec.name) == [entry["question"] for entry in edited]

        await eventually(faq_edited, what="the edited FAQ")

        # No knowledge in the spec at all: every spec document goes, the CLI's stays as it was.
        await spec.put(faq=[], folders=[])
        await wait_for_documents(knowledge, spec.name, set())
        listed = await knowledge.list_documents(spec.name)
        assert listed.documents == [manual]


async def test_a_folder_that_disappears_keeps_its_documents(
    embedding_service: Embedding,
    knowledge: KnowledgeClient,
    registry: TenantRegistry,
    folder: Path,
    sync_finished: SyncFinished,
) -> None:
    spec = Spec(registry, {"faq": FAQ[:1], "folders": [str(folder)], "language": "en"})
    in_folder = {f"spec:folder:{folder}/guide.md", f"spec:folder:{folder}/faq.csv"}
    async with embedding_service(backend="none"):
        await spec.put()
        before = await wait_for_documents(knowledge, spec.name, {"spec:faq", *in_folder})
        shutil.rmtree(folder)
        with capture_logs() as logs:
            await spec.put(faq=FAQ)  # any change of the spec syncs it again

            async def faq_edited() -> bool:
                return len(await faq_questions(knowledge, spec.name)) == 2

            await eventually(faq_edited, what="the sync after the folder went")
            await sync_finished(spec.name)
        after = await spec_documents(knowledge, spec.name)
        assert {name: after[name] for name in in_folder} == {name: before[name] for name in in_folder}
        problems = [entry for entry in logs if entry["event"] == "spec knowledge source not ingested"]
        assert [(entry["tenant"], entry["log_level"]) for entry in problems] == [(spec.name, "warning")]
        assert str(folder) in problems[0]["problem"] and "no such file or folder" in problems[0]["problem"]


async def test_a_file_that_becomes_unreadable_keeps_its_last_good_version(
    embedding_service: Embedding,
    knowledge: KnowledgeClient,
    registry: TenantRegistry,
    folder: Path,
    sync_finished: SyncFinished,
) -> None:
    spec = Spec(registry, {"faq": FAQ[:1], "folders": [str(folder)], "language": "en"})
    csv_document = f"spec:folder:{folder}/faq.csv"
    guide_document = f"spec:folder:{folder}/guide.md"
    async with embedding_service(backend="none"):
        await spec.put()
        before = await wait_for_documents(knowledge, spec.name, {"spec:faq", guide_document, csv_document})
        (folder / "faq.csv").write_text("where,what\nnowhere,nothing\n")
        (folder / "guide.md").write_text("# Delivery\n\nWe deliver in 2 days.\n")
        await spec.put(faq=FAQ)

        async def guide_updated() -> bool:
            documents = await spec_documents(knowledge, spec.name)
            return documents[guide_document].content_hash != before[guide_document].content_hash

        await eventually(guide_updated, what="the readable file to be updated")
        await sync_finished(spec.name)
        after = await spec_documents(knowledge, spec.name)
        assert after[csv_document] == before[csv_document]


async def test_a_folder_is_read_again_every_interval(
    embedding_service: Embedding, knowledge: KnowledgeClient, registry: TenantRegistry, folder: Path
) -> None:
    spec = Spec(registry, {"folders": [str(folder)], "language": "en"})
    guide_document = f"spec:folder:{folder}/guide.md"
    async with embedding_service(backend="none", spec_sync_interval_s=0.2):
        await spec.put()
        await wait_for_documents(knowledge, spec.name, {guide_document, f"spec:folder:{folder}/faq.csv"})
        # The registry does not change: only the periodic pass can see these.
        (folder / "guide.md").write_text("# Delivery\n\nWe deliver by drone within the hour.\n")
        (folder / "faq.csv").unlink()
        await wait_for_documents(knowledge, spec.name, {guide_document})
        found = await knowledge.search(spec.name, SearchRequest(text="drone delivery"))
        assert found.hits[0].body == "We deliver by drone within the hour."
