"""The remote backend: any OpenAI-compatible `/embeddings` endpoint (here a local fake), end to end,
and what the service says when that endpoint answers wrong or is not there."""

from __future__ import annotations

import pytest

from tests.knowledge.conftest import Embedding
from tests.support.knowledge import (
    DIMENSIONS,
    RETURNS,
    SHIPPING,
    STORES,
    TENANT,
    WARRANTY,
    document,
    remote_embeddings,
    vector_hashes,
)
from tests.support.servers import free_port
from zapflow.knowledge.client import KnowledgeClient, KnowledgeError
from zapflow.knowledge.messages import SearchRequest, ShowRequest
from zapflow.knowledge.store import passage_hash
from zapflow.platform.settings import CoreSettings


async def test_the_remote_backend_embeds_and_searches_by_meaning(
    core: CoreSettings, embedding_service: Embedding, knowledge: KnowledgeClient
) -> None:
    passages = [SHIPPING, RETURNS, WARRANTY, STORES]
    async with remote_embeddings() as remote, embedding_service(**remote.settings(), remote_api_key="sk-test"):
        committed = await knowledge.commit(TENANT, document("faq.md", passages))
        assert committed.embedded == 4
        model = f"remote/fake-embed/{DIMENSIONS}"
        assert (await knowledge.list_documents(TENANT)).model == model
        assert await vector_hashes(core, TENANT, model) == {passage_hash(p) for p in passages}
        question = SearchRequest(text="what does shipping cost?")
        found = await knowledge.search(TENANT, question)
        assert found.mode == "hybrid"
        assert found.hits[0].body == SHIPPING.body
        assert found.hits[0].similarity is not None and found.hits[0].similarity > 0
        await knowledge.search(TENANT, question)
        asked = [request for request in remote.fake.embedding_requests if request.inputs == [question.text]]
        assert len(asked) == 1, "a question asked again is answered from the cache"
        assert {request.body["model"] for request in remote.fake.embedding_requests} == {"fake-embed"}
        assert {request.headers["authorization"] for request in remote.fake.embedding_requests} == {"Bearer sk-test"}


async def test_vectors_of_the_wrong_dimension_fail_the_commit_and_change_nothing(
    core: CoreSettings, embedding_service: Embedding, knowledge: KnowledgeClient
) -> None:
    async with remote_embeddings() as remote, embedding_service(**remote.settings()):
        before = (await knowledge.commit(TENANT, document("faq.md", [SHIPPING]))).document
        remote.fake.embedding_dimensions = DIMENSIONS + 1
        with pytest.raises(KnowledgeError) as failed:
            await knowledge.commit(TENANT, document("faq.md", [SHIPPING, RETURNS]))
        assert failed.value.code == "failed"
        message = str(failed.value)
        assert f"{DIMENSIONS + 1} dimensions" in message and str(DIMENSIONS) in message, message
        listed = await knowledge.list_documents(TENANT)
        assert listed.documents == [before]
        assert (await knowledge.show_document(TENANT, ShowRequest(name="faq.md"))).passages == [SHIPPING]
        assert await vector_hashes(core, TENANT) == {passage_hash(SHIPPING)}
        with pytest.raises(KnowledgeError) as failed:
            await knowledge.search(TENANT, SearchRequest(text="a question never asked"))
        assert failed.value.code == "failed"


async def test_an_endpoint_that_is_not_there_fails_the_commit_clearly(
    embedding_service: Embedding, knowledge: KnowledgeClient
) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    settings = {"backend": "remote", "remote_url": url, "remote_model": "fake-embed", "remote_dimensions": DIMENSIONS}
    async with embedding_service(**settings, remote_timeout_s=2):
        with pytest.raises(KnowledgeError) as failed:
            await knowledge.commit(TENANT, document("faq.md", [SHIPPING, RETURNS]))
        assert failed.value.code == "failed"
        assert url in str(failed.value) and "cannot be reached" in str(failed.value), str(failed.value)
        listed = await knowledge.list_documents(TENANT)
        assert (listed.documents, listed.chunks) == ([], 0)
