"""Two replicas on one database and one NATS: each keeps its in-memory index equal to SQL, whichever
replica wrote (a replica that starts loads from SQL; a running one applies the changes others publish)."""

from __future__ import annotations

import asyncio

from tests.support.knowledge import (
    RETURNS,
    SHIPPING,
    STORES,
    TENANT,
    WARRANTY,
    bodies,
    document,
    indexed,
    passage,
    remote_embeddings,
    replica,
)
from tests.support.platform import eventually
from zapflow.knowledge.client import KnowledgeClient
from zapflow.knowledge.messages import RemoveRequest, SearchRequest
from zapflow.knowledge.service import Knowledge
from zapflow.knowledge.store import KnowledgeStore
from zapflow.platform import catalogue
from zapflow.platform.settings import CoreSettings
from zapflow.store.engine import create_engine
from zapflow.v1 import knowledge_pb2


async def test_a_replica_started_later_loads_what_another_ingested(
    core: CoreSettings, knowledge: KnowledgeClient
) -> None:
    async with remote_embeddings() as remote:
        settings = remote.settings()
        async with replica(core, **settings) as first:
            await knowledge.commit(TENANT, document("faq.md", [SHIPPING, RETURNS]))
            async with replica(core, **settings) as second:
                assert indexed(second) == {"faq.md": 2}
                assert second.index_of(TENANT).knowledge.has_vectors
                found = await second.search(TENANT, SearchRequest(text="can I return a product?"))
                assert (found.mode, found.hits[0].body) == ("hybrid", RETURNS.body)
            assert indexed(first) == {"faq.md": 2}


async def test_a_commit_through_one_replica_reaches_the_other(core: CoreSettings) -> None:
    async with remote_embeddings() as remote:
        settings = remote.settings()
        async with replica(core, **settings) as first, replica(core, **settings) as second:
            await first.commit(TENANT, document("faq.md", [SHIPPING, RETURNS]))

            async def second_has(expected: dict[str, int]) -> bool:
                return indexed(second) == expected

            await eventually(lambda: second_has({"faq.md": 2}), what="the other replica to load the document")
            found = await second.search(TENANT, SearchRequest(text="how long is the warranty?", limit=10))
            assert WARRANTY.body not in bodies(found)
            # A replaced document is replaced there too.
            await first.commit(TENANT, document("faq.md", [WARRANTY, STORES, SHIPPING]))
            await eventually(lambda: second_has({"faq.md": 3}), what="the replaced document")
            found = await second.search(TENANT, SearchRequest(text="how long is the warranty?", limit=10))
            assert found.hits[0].body == WARRANTY.body
            assert RETURNS.body not in bodies(found)
            # And the other way round.
            await second.commit(TENANT, document("more.md", [RETURNS]))
            await eventually(lambda: second_has({"faq.md": 3, "more.md": 1}), what="the second replica's own commit")

            async def first_has_both() -> bool:
                return indexed(first) == {"faq.md": 3, "more.md": 1}

            await eventually(first_has_both, what="the first replica to load the other's commit")


async def test_a_removal_through_one_replica_reaches_the_other(core: CoreSettings) -> None:
    async with replica(core, backend="none") as first:
        await first.commit(TENANT, document("faq.md", [SHIPPING, RETURNS]))
        await first.commit(TENANT, document("stores.md", [STORES]))
        async with replica(core, backend="none") as second:
            assert indexed(second) == {"faq.md": 2, "stores.md": 1}
            await first.remove_documents(TENANT, RemoveRequest(names=["faq.md"]))

            async def removed_there() -> bool:
                return indexed(second) == {"stores.md": 1}

            await eventually(removed_there, what="the other replica to drop the document")
            found = await second.search(TENANT, SearchRequest(text="shipping costs", limit=10))
            assert "faq.md" not in {hit.document for hit in found.hits}


async def test_a_document_being_reloaded_is_never_searched_half_loaded(core: CoreSettings) -> None:
    # A replica reloads what it committed twice: once itself, once when its own change comes back.
    passages = [passage(f"Answer number {number} about shipping.", f"Question {number}") for number in range(40)]
    async with replica(core, backend="none") as knowledge:
        await knowledge.commit(TENANT, document("faq.md", passages))
        change = knowledge_pb2.KnowledgeChange(tenant=TENANT, document="faq.md")
        reloads = [asyncio.create_task(knowledge.apply(catalogue.DOCUMENT_CHANGED, change)) for _ in range(2)]
        seen = []
        while not all(reload.done() for reload in reloads):
            seen.append(indexed(knowledge))
            found = await knowledge.search(TENANT, SearchRequest(text="shipping", limit=50))
            seen.append({"faq.md": len(found.hits)})
            await asyncio.sleep(0)  # a search without a model never waits: let the reloads run
        await asyncio.gather(*reloads)
        assert seen and all(state == {"faq.md": 40} for state in seen), seen
        assert indexed(knowledge) == {"faq.md": 40}


async def test_a_change_whose_notice_was_lost_is_repaired_from_sql(core: CoreSettings) -> None:
    async with replica(core, backend="none") as first, replica(core, backend="none") as second:
        await first.commit(TENANT, document("faq.md", [SHIPPING]))
        await first.commit(TENANT, document("old.md", [WARRANTY]))
        await eventually(lambda: _has(second, {"faq.md": 1, "old.md": 1}), what="the other replica to load them")
        # Written to SQL with no notice on ZF_KNOWLEDGE, as when NATS fails right after the write.
        engine = create_engine(core.database_url)
        store = KnowledgeStore(engine)
        try:
            await store.replace_document(TENANT, "faq.md", "markdown", "cli", "0" * 64, [SHIPPING, RETURNS], 100)
            await store.replace_document(TENANT, "new.md", "markdown", "cli", "1" * 64, [STORES], 100)
            await store.remove_document(TENANT, "old.md")
        finally:
            await engine.dispose()
        assert indexed(second) == {"faq.md": 1, "old.md": 1}

        repaired = await second.repair()

        assert sorted(repaired) == [(TENANT, "faq.md"), (TENANT, "new.md"), (TENANT, "old.md")]
        assert indexed(second) == {"faq.md": 2, "new.md": 1}
        assert await second.repair() == []


async def _has(knowledge: Knowledge, expected: dict[str, int]) -> bool:
    return indexed(knowledge) == expected
