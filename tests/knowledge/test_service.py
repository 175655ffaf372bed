"""The embedding service through its NATS API: deduplicated embedding, re-ingest, quota, tenant
isolation, bad requests, restarts and lexical mode, on real NATS, Redis and SQLite.

The remote backend against a local fake (a hashed bag of words) stands in for a model wherever the
model itself is not the point: it is instant and counts what it embeds.
"""

from __future__ import annotations

import json

import pytest
from nats.aio.client import Client as NATS

from tests.knowledge.conftest import Embedding
from tests.support.knowledge import (
    DIMENSIONS,
    RETURNS,
    SHIPPING,
    STORES,
    TENANT,
    WARRANTY,
    bodies,
    document,
    embedded_total,
    kb_document,
    passage,
    remote_embeddings,
    vector_hashes,
)
from tests.support.platform import eventually
from zapflow.knowledge.client import KnowledgeClient, KnowledgeError
from zapflow.knowledge.messages import (
    EmbedRequest,
    ErrorReply,
    RemoveRequest,
    SearchRequest,
    ShowRequest,
)
from zapflow.knowledge.store import passage_hash
from zapflow.platform import catalogue
from zapflow.platform.settings import CoreSettings

# --- deduplicated embedding ---


async def test_committing_the_same_passages_again_embeds_nothing(
    embedding_service: Embedding, knowledge: KnowledgeClient
) -> None:
    passages = [SHIPPING, RETURNS, WARRANTY]
    async with remote_embeddings() as remote, embedding_service(**remote.settings()):
        first = await knowledge.commit(TENANT, document("faq.md", passages))
        assert (first.unchanged, first.added, first.embedded) == (False, 3, 3)
        again = await knowledge.commit(TENANT, document("faq.md", passages))
        assert (again.unchanged, again.added, again.removed, again.kept, again.embedded) == (True, 0, 0, 3, 0)
        assert again.document == first.document
        assert sorted(remote.embedded(passages)) == sorted(p.text for p in passages)


async def test_a_passage_two_documents_share_is_embedded_once(
    core: CoreSettings, embedding_service: Embedding, knowledge: KnowledgeClient
) -> None:
    async with remote_embeddings() as remote, embedding_service(**remote.settings()):
        first = await knowledge.commit(TENANT, document("a.md", [SHIPPING, RETURNS, SHIPPING]))
        assert (first.added, first.embedded) == (2, 2), "a passage repeated in one document is embedded once"
        assert first.document.chunks == 3
        again = await knowledge.commit(TENANT, document("a.md", [SHIPPING, RETURNS, SHIPPING]))
        assert (again.unchanged, again.kept) == (True, 2), "kept counts distinct texts, as added does"
        second = await knowledge.commit(TENANT, document("b.md", [RETURNS, WARRANTY]))
        assert second.embedded == 1
        assert remote.embedded([RETURNS]) == [RETURNS.text]
        assert await vector_hashes(core, TENANT) == {passage_hash(p) for p in (SHIPPING, RETURNS, WARRANTY)}
        # Removing one document keeps the vector the other still uses.
        await knowledge.remove_documents(TENANT, RemoveRequest(names=["a.md"]))
        assert await vector_hashes(core, TENANT) == {passage_hash(p) for p in (RETURNS, WARRANTY)}


async def test_an_embed_request_then_the_commit_embeds_once(
    embedding_service: Embedding, knowledge: KnowledgeClient
) -> None:
    passages = [SHIPPING, RETURNS]
    async with remote_embeddings() as remote, embedding_service(**remote.settings()):
        before = embedded_total(TENANT)
        ahead = await knowledge.embed(TENANT, EmbedRequest(passages=passages))
        assert (ahead.embedded, ahead.reused) == (2, 0)
        again = await knowledge.embed(TENANT, EmbedRequest(passages=[*passages, WARRANTY]))
        assert (again.embedded, again.reused) == (1, 2)
        committed = await knowledge.commit(TENANT, document("faq.md", [*passages, WARRANTY]))
        assert (committed.added, committed.embedded) == (3, 0)
        assert sorted(remote.embedded([*passages, WARRANTY])) == sorted(p.text for p in (*passages, WARRANTY))
        assert embedded_total(TENANT) - before == 3, "the metric counts what the embed requests ran"


# --- re-ingest ---


async def test_reingesting_a_changed_document_replaces_only_what_changed(
    core: CoreSettings, embedding_service: Embedding, knowledge: KnowledgeClient
) -> None:
    warranty_now = passage("Every appliance has a 24 month manufacturer warranty.", "Warranty")
    async with remote_embeddings() as remote, embedding_service(**remote.settings()):
        await knowledge.commit(TENANT, document("faq.md", [SHIPPING, RETURNS, WARRANTY]))
        changed = await knowledge.commit(TENANT, document("faq.md", [SHIPPING, warranty_now, STORES]))
        assert (changed.unchanged, changed.added, changed.removed, changed.kept) == (False, 2, 2, 1)
        assert changed.embedded == 2
        assert remote.embedded([SHIPPING]) == [SHIPPING.text], "the kept passage is not embedded again"
        assert changed.document.chunks == 3
        for question in ("return a product within 7 days", "12 month warranty", RETURNS.text, WARRANTY.text):
            found = await knowledge.search(TENANT, SearchRequest(text=question, limit=10))
            assert found.mode == "hybrid"
            assert RETURNS.body not in bodies(found) and WARRANTY.body not in bodies(found), question
        found = await knowledge.search(TENANT, SearchRequest(text="how long is the warranty?"))
        assert found.hits[0].body == warranty_now.body
        assert await vector_hashes(core, TENANT) == {passage_hash(p) for p in (SHIPPING, warranty_now, STORES)}
        shown = await knowledge.show_document(TENANT, ShowRequest(name="faq.md"))
        assert shown.passages == [SHIPPING, warranty_now, STORES]


# --- quota ---


async def test_a_commit_past_the_quota_is_refused_and_changes_nothing(
    core: CoreSettings, embedding_service: Embedding, knowledge: KnowledgeClient
) -> None:
    async with remote_embeddings() as remote, embedding_service(**remote.settings(), max_chunks_per_tenant=3):
        await knowledge.commit(TENANT, document("a.md", [SHIPPING, RETURNS]))
        with pytest.raises(KnowledgeError) as refused:
            await knowledge.commit(TENANT, document("b.md", [WARRANTY, STORES]))
        assert refused.value.code == "quota"
        assert "would hold 4 chunks" in str(refused.value) and "quota is 3" in str(refused.value), str(refused.value)
        listed = await knowledge.list_documents(TENANT)
        assert ([d.name for d in listed.documents], listed.chunks, listed.quota) == (["a.md"], 2, 3)
        assert remote.embedded([WARRANTY, STORES]) == [], "refused before anything was embedded"
        assert await vector_hashes(core, TENANT) == {passage_hash(SHIPPING), passage_hash(RETURNS)}
        found = await knowledge.search(TENANT, SearchRequest(text=WARRANTY.text, limit=10))
        assert WARRANTY.body not in bodies(found)
        # A document's own chunks do not count against its replacement.
        grown = await knowledge.commit(TENANT, document("a.md", [SHIPPING, RETURNS, WARRANTY]))
        assert grown.document.chunks == 3


# --- tenant isolation ---


async def test_one_tenant_never_sees_another_tenants_knowledge(
    embedding_service: Embedding, knowledge: KnowledgeClient
) -> None:
    private = passage("The staff discount code is ALPHA-7731, for employees only.", "Staff discount")
    async with remote_embeddings() as remote, embedding_service(**remote.settings()):
        await knowledge.commit("alpha", document("secret.md", [private, SHIPPING]))
        found = await knowledge.search("beta", SearchRequest(text=private.text))
        assert found.hits == [], "a tenant with no knowledge base finds nothing"
        await knowledge.commit("beta", document("beta.md", [RETURNS, STORES]))
        for question in (private.text, "staff discount code", SHIPPING.text, "ALPHA-7731"):
            found = await knowledge.search("beta", SearchRequest(text=question, limit=50))
            assert {hit.document for hit in found.hits} == {"beta.md"}, question
        listed = await knowledge.list_documents("beta")
        assert [d.name for d in listed.documents] == ["beta.md"]
        assert listed.chunks == 2
        with pytest.raises(KnowledgeError) as missing:
            await knowledge.show_document("beta", ShowRequest(name="secret.md"))
        assert missing.value.code == "not_found"
        removed = await knowledge.remove_documents("beta", RemoveRequest(names=["secret.md"]))
        assert (removed.removed, removed.missing) == ([], ["secret.md"])
        assert [d.name for d in (await knowledge.list_documents("alpha")).documents] == ["secret.md"]


# --- bad requests ---


async def error_reply(nc: NATS, subject: str, data: bytes) -> ErrorReply:
    answer = await nc.request(subject, data, timeout=5)
    return ErrorReply.model_validate_json(answer.data)


async def test_malformed_json_is_refused_with_a_reason(embedding_service: Embedding, nc: NATS) -> None:
    async with embedding_service(backend="none"):
        refused = await error_reply(nc, catalogue.knowledge_request_subject("search", TENANT), b'{"text": "hi"')
    assert refused.code == "invalid"
    assert "JSON" in refused.error


async def test_a_field_out_of_range_is_refused_naming_it(embedding_service: Embedding, nc: NATS) -> None:
    async with embedding_service(backend="none"):
        request = json.dumps({"text": "frete", "limit": 500}).encode()
        refused = await error_reply(nc, catalogue.knowledge_request_subject("search", TENANT), request)
    assert refused.code == "invalid"
    assert refused.error.startswith("limit:"), refused.error
    assert "50" in refused.error


async def test_an_unknown_operation_is_refused(embedding_service: Embedding, nc: NATS) -> None:
    subject = f"{catalogue.KNOWLEDGE_REQUEST_PREFIX}.frobnicate.{TENANT}"
    async with embedding_service(backend="none"):
        refused = await error_reply(nc, subject, b"{}")
    assert refused.code == "invalid"
    assert "frobnicate" in refused.error


async def test_a_token_that_is_not_a_tenant_name_is_refused(embedding_service: Embedding, nc: NATS) -> None:
    subject = catalogue.knowledge_request_subject("list", "Not_A-Tenant")
    async with embedding_service(backend="none"):
        refused = await error_reply(nc, subject, b"{}")
    assert refused.code == "invalid"
    assert refused.error == "'Not_A-Tenant' is not a tenant name"


async def test_without_a_service_the_client_says_unavailable(knowledge: KnowledgeClient) -> None:
    with pytest.raises(KnowledgeError) as unavailable:
        await knowledge.search(TENANT, SearchRequest(text="frete"))
    assert unavailable.value.code == "unavailable"
    assert TENANT in str(unavailable.value)


# --- restarts ---


async def test_a_restarted_service_searches_without_embedding_again(
    embedding_service: Embedding, knowledge: KnowledgeClient
) -> None:
    passages = [SHIPPING, RETURNS, WARRANTY]
    async with remote_embeddings() as remote:
        async with embedding_service(**remote.settings()):
            await knowledge.commit(TENANT, document("faq.md", passages))
        embedded = embedded_total(TENANT)
        async with embedding_service(**remote.settings()):
            found = await knowledge.search(TENANT, SearchRequest(text="how long is the warranty?"))
            assert found.mode == "hybrid"
            assert found.hits[0].body == WARRANTY.body
        assert embedded_total(TENANT) == embedded
        assert sorted(remote.embedded(passages)) == sorted(p.text for p in passages), "each passage once"


@pytest.mark.parametrize("model_before", [None, "fake-embed"])
async def test_a_new_model_backfills_the_vectors_it_lacks(
    core: CoreSettings, embedding_service: Embedding, knowledge: KnowledgeClient, model_before: str | None
) -> None:
    passages = [SHIPPING, RETURNS, WARRANTY]
    async with remote_embeddings() as remote:
        before = remote.settings(model_before) if model_before else {"backend": "none"}
        async with embedding_service(**before):
            await knowledge.commit(TENANT, document("faq.md", passages))
        async with embedding_service(**remote.settings("fake-embed-2")):
            new_model = f"remote/fake-embed-2/{DIMENSIONS}"

            async def backfilled() -> bool:
                return await vector_hashes(core, TENANT, new_model) == {passage_hash(p) for p in passages}

            await eventually(backfilled, what="vectors of the new model")
            listed = await knowledge.list_documents(TENANT)
            assert listed.model == new_model
            found = await knowledge.search(TENANT, SearchRequest(text="how long is the warranty?"))
            assert found.mode == "hybrid"
            assert found.hits[0].body == WARRANTY.body
            assert found.hits[0].similarity is not None
        models = 2 if model_before else 1
        assert sorted(remote.embedded(passages)) == sorted(models * [p.text for p in passages]), "once per model"


# --- lexical mode ---


async def test_without_a_model_search_is_lexical_and_ranks_right(
    embedding_service: Embedding, knowledge: KnowledgeClient
) -> None:
    async with embedding_service(backend="none"):
        for path in ("pt/delivery.md", "pt/payment.md", "en/delivery.md", "en/returns.md"):
            committed = await knowledge.commit(TENANT, kb_document(path))
            assert committed.embedded == 0
        found = await knowledge.search(TENANT, SearchRequest(text="qual o valor do frete?"))
        assert (found.mode, found.language) == ("lexical", "pt")
        assert found.hits[0].title.endswith("Valor do frete"), found.hits[0]
        assert all(hit.similarity is None and hit.language == "pt" for hit in found.hits)
        found = await knowledge.search(TENANT, SearchRequest(text="Em quantas vezes posso parcelar sem juros?"))
        assert found.hits[0].title.endswith("Parcelamento"), found.hits[0]
        found = await knowledge.search(TENANT, SearchRequest(text="how do I get a refund?"))
        assert found.language == "en"
        assert found.hits[0].document == "en/returns.md", found.hits[0]
        listed = await knowledge.list_documents(TENANT)
        assert listed.model is None


async def test_a_language_the_detector_does_not_know_is_searched_like_the_others(
    embedding_service: Embedding, knowledge: KnowledgeClient
) -> None:
    klingon = passage("Qapla' batlh Daqawlu'taH", "tlhIngan Hol", language="tlh")
    async with embedding_service(backend="none"):
        await knowledge.commit(TENANT, document("faq.md", [SHIPPING, klingon]))
        found = await knowledge.search(TENANT, SearchRequest(text="Qapla' batlh"))
        assert found.hits[0].body == klingon.body
        found = await knowledge.search(TENANT, SearchRequest(text="what does shipping cost?"))
        assert found.hits[0].body == SHIPPING.body


async def test_an_answer_too_large_for_nats_is_refused_with_a_reason(
    embedding_service: Embedding, knowledge: KnowledgeClient
) -> None:
    # Two documents that each fit in a request, whose passages together do not fit in one answer.
    words = "shipping " * 5_000
    async with embedding_service(backend="none"):
        for name in ("a.md", "b.md"):
            passages = [passage(f"{number} {words}", f"{name} {number}") for number in range(12)]
            await knowledge.commit(TENANT, document(name, passages))
        with pytest.raises(KnowledgeError) as refused:
            await knowledge.search(TENANT, SearchRequest(text="shipping", limit=50))
        assert refused.value.code == "failed"
        assert "max_payload" in str(refused.value) and "limit" in str(refused.value), str(refused.value)
        found = await knowledge.search(TENANT, SearchRequest(text="shipping", limit=5))
        assert len(found.hits) == 5


async def test_an_ingested_document_cannot_take_a_name_of_the_specs(embedding_service: Embedding, nc: NATS) -> None:
    request = document("faq.md", [SHIPPING]).model_dump(mode="json") | {"name": "spec:faq"}
    async with embedding_service(backend="none"):
        refused = await error_reply(
            nc, catalogue.knowledge_request_subject("commit", TENANT), json.dumps(request).encode()
        )
    assert refused.code == "invalid"
    assert "belong to the tenant spec" in refused.error


async def test_a_question_taken_for_another_language_is_searched_in_all_when_its_own_has_nothing(
    embedding_service: Embedding, knowledge: KnowledgeClient
) -> None:
    async with embedding_service(backend="none"):
        await knowledge.commit(TENANT, document("pt.md", [passage("O frete é grátis acima de R$ 299.", "Frete", "pt")]))
        await knowledge.commit(TENANT, document("en.md", [RETURNS]))
        # One word: the detector cannot tell, and nothing English shares it.
        found = await knowledge.search(TENANT, SearchRequest(text="frete"))
    assert [hit.document for hit in found.hits] == ["pt.md"]
    assert found.language is None
