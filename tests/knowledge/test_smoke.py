"""A first pass through the service: ingest, search, list (the detailed suites build on it)."""

from __future__ import annotations

from pathlib import Path

from tests.knowledge.conftest import Embedding
from zapflow.knowledge.client import KnowledgeClient
from zapflow.knowledge.documents import read_document
from zapflow.knowledge.messages import CommitRequest, SearchRequest
from zapflow.knowledge.text import LanguageDetector

KB = Path(__file__).resolve().parents[2] / "bench" / "retrieval" / "kb"


async def test_ingest_then_search(embedding_service: Embedding, knowledge: KnowledgeClient) -> None:
    detector = LanguageDetector()
    async with embedding_service():
        for language in ("pt", "en"):
            document = read_document(KB / language / "delivery.md", f"{language}/delivery.md", None, detector)
            reply = await knowledge.commit(
                "shop",
                CommitRequest(
                    name=document.name,
                    kind=document.kind,
                    content_hash=document.content_hash,
                    passages=document.passages,
                ),
            )
            assert reply.added == len(document.passages)
        found = await knowledge.search("shop", SearchRequest(text="qual o valor do frete?"))
        assert found.mode == "hybrid"
        assert found.language == "pt"
        assert found.hits[0].title.endswith("Valor do frete"), found.hits[0]
        found = await knowledge.search("shop", SearchRequest(text="how much is shipping?"))
        assert found.language == "en"
        assert found.hits[0].language == "en"
        listed = await knowledge.list_documents("shop")
        assert [d.name for d in listed.documents] == ["en/delivery.md", "pt/delivery.md"]
