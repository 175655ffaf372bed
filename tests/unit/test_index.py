"""The in-memory index: BM25 scores equal bm25s's, and the hybrid collection ranks, filters and
forgets entries the way search relies on."""

from __future__ import annotations

from pathlib import Path

import bm25s
import numpy as np
import pytest

from zapflow.knowledge.documents import expand, read_document
from zapflow.knowledge.index import Collection
from zapflow.knowledge.lexical import LexicalIndex
from zapflow.knowledge.messages import Passage
from zapflow.knowledge.text import Analyzer, LanguageDetector

KB = Path(__file__).resolve().parents[2] / "bench" / "retrieval" / "kb"
ANALYZER = Analyzer()
QUERIES = [
    ("pt", "Qual o valor do frete para o Nordeste?"),
    ("pt", "como acionar a garantia do produto"),
    ("en", "How do I track my order?"),
    ("en", "refund paid with Pix"),
    ("es", "¿Cuál es el horario de la tienda?"),
    ("es", "cupón de descuento primera compra"),
]


def kb_passages() -> list[Passage]:
    detector = LanguageDetector()
    return [
        passage
        for path, name in expand([KB])
        for passage in read_document(path, name, name.split("/")[0], detector).passages
    ]


PASSAGES = kb_passages()
TERMS = [ANALYZER.terms(passage.text, passage.language) for passage in PASSAGES]


def bm25s_scores(corpus: list[list[str]], query: list[str]) -> np.ndarray:
    reference = bm25s.BM25()
    reference.index(corpus, show_progress=False)
    return np.asarray(reference.get_scores(query))


def query_terms(language: str, text: str) -> list[str]:
    return ANALYZER.query_terms(text, (language,))


def test_the_knowledge_base_is_large_enough_to_compare() -> None:
    assert len(PASSAGES) > 100
    assert {passage.language for passage in PASSAGES} == {"pt", "en", "es"}


@pytest.mark.parametrize(("language", "text"), QUERIES)
def test_bm25_scores_equal_bm25s(language: str, text: str) -> None:
    index = LexicalIndex()
    for slot, terms in enumerate(TERMS):
        index.add(slot, terms)
    query = query_terms(language, text)
    ours = index.scores(query, len(TERMS))
    reference = bm25s_scores(TERMS, query)
    assert reference.max() > 0, "the query matches something"
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)


def test_bm25_scores_stay_equal_after_removing_and_adding_documents() -> None:
    index = LexicalIndex()
    for slot, terms in enumerate(TERMS):
        index.add(slot, terms)
    removed = set(range(0, len(TERMS), 3))
    for slot in removed:
        index.remove(slot)
    kept = [slot for slot in range(len(TERMS)) if slot not in removed]
    for language, text in QUERIES:
        query = query_terms(language, text)
        ours = index.scores(query, len(TERMS))
        reference = bm25s_scores([TERMS[slot] for slot in kept], query)
        np.testing.assert_allclose(ours[kept], reference, rtol=1e-5, atol=1e-6)
        assert not ours[sorted(removed)].any(), "a removed document scores nothing"
    # Back in other slots than before (a slot is reused by whatever comes next).
    moved = {slot: len(TERMS) + number for number, slot in enumerate(sorted(removed))}
    for old, new in moved.items():
        index.add(new, TERMS[old])
    order = kept + sorted(moved.values())
    corpus = [TERMS[slot] for slot in kept] + [TERMS[old] for old in sorted(moved)]
    for language, text in QUERIES:
        query = query_terms(language, text)
        ours = index.scores(query, len(TERMS) + len(moved))
        np.testing.assert_allclose(ours[order], bm25s_scores(corpus, query), rtol=1e-5, atol=1e-6)


def test_bm25_adding_a_slot_again_replaces_its_terms() -> None:
    index = LexicalIndex()
    index.add(0, ["frete", "gratis"])
    index.add(1, ["garantia"])
    index.add(0, ["garantia", "estendida"])
    assert index.size == 2
    assert not index.scores(["frete"], 2).any()
    np.testing.assert_allclose(
        index.scores(["garantia"], 2), bm25s_scores([["garantia", "estendida"], ["garantia"]], ["garantia"]), rtol=1e-6
    )


def unit(*values: float) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def test_collection_ranks_by_meaning_and_words_and_reports_both() -> None:
    collection: Collection[str] = Collection(3)
    collection.put("a", "shipping", "en", ["ship", "cost"], unit(1, 0, 0))
    collection.put("b", "returns", "en", ["return", "refund"], unit(0, 1, 0))
    collection.put("c", "warranty", "en", ["warranti"], unit(0, 0, 1))
    # By meaning alone: the query vector is nearest b, although no word matches.
    [best, *_] = collection.search(["nothing"], unit(0.1, 1, 0), None, 3, dense_weight=1.0)
    assert best.payload == "returns"
    assert best.similarity == pytest.approx(float(unit(0.1, 1, 0) @ unit(0, 1, 0)))
    assert best.lexical == 0
    # By words alone: the lexical side decides and similarity is still the raw cosine.
    [best, *_] = collection.search(["warranti"], unit(0.1, 1, 0), None, 3, dense_weight=0.0)
    assert best.payload == "warranty"
    assert best.lexical > 0
    assert best.similarity == pytest.approx(0.0, abs=1e-6)
    # Without a query vector it is lexical, with no similarity.
    hits = collection.search(["ship"], None, None, 1, dense_weight=0.8)
    assert [(hit.payload, hit.similarity, hit.score) for hit in hits] == [("shipping", None, 1.0)]


def test_collection_filters_by_language_and_counts_languages() -> None:
    collection: Collection[str] = Collection(2)
    collection.put("pt", "frete", "pt", ["fret"], None)
    collection.put("en", "shipping", "en", ["ship", "fret"], None)
    collection.put("es", "envio", "es", ["envi"], None)
    assert collection.languages == ("en", "es", "pt")
    assert not collection.has_vectors
    assert [hit.payload for hit in collection.search(["fret"], None, ("pt",), 5, 0.8)] == ["frete"]
    assert collection.search(["fret"], None, ("de",), 5, 0.8) == []
    collection.remove("es")
    assert collection.languages == ("en", "pt")


def test_collection_forgets_removed_and_replaced_entries() -> None:
    collection: Collection[str] = Collection(2)
    collection.put("a", "old text", "en", ["old"], unit(1, 0))
    collection.put("b", "other", "en", ["other"], None)
    collection.put("a", "new text", "en", ["new"], None)
    assert len(collection) == 2
    assert not collection.has_vectors, "the replaced entry's vector went with it"
    assert [hit.payload for hit in collection.search(["old"], None, None, 5, 0.8) if hit.lexical] == []
    assert [hit.payload for hit in collection.search(["new"], None, None, 1, 0.8)] == ["new text"]
    collection.remove("a")
    collection.remove("a")  # removing twice is harmless
    assert "a" not in collection
    assert [hit.payload for hit in collection.search(["new", "other"], None, None, 5, 0.8)] == ["other"]
    # A freed slot is reused, and the entry in it is whole.
    collection.put("c", "third", "en", ["third"], unit(0, 1))
    assert len(collection) == 2
    [hit] = collection.search(["third"], unit(0, 1), None, 1, 0.8)
    assert (hit.payload, hit.similarity) == ("third", pytest.approx(1.0))


def test_collection_grows_past_its_first_capacity_and_limits_hits() -> None:
    collection: Collection[int] = Collection(4)
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(300, 4)).astype(np.float32)
    for number, vector in enumerate(vectors):
        collection.put(str(number), number, "en", [f"w{number}"], vector)
    assert len(collection) == 300
    query = vectors[123]
    hits = collection.search([], query, None, 10, dense_weight=1.0)
    assert len(hits) == 10
    assert hits[0].payload == 123
    assert hits[0].similarity == pytest.approx(1.0)
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True)
    assert collection.vector_bytes >= 300 * 4 * 4


def test_without_vectors_an_entry_sharing_no_term_is_not_a_hit() -> None:
    collection: Collection[str] = Collection(4)
    collection.put("a", "a", "en", ["ship", "cost"], None)
    collection.put("b", "b", "en", ["warranti"], None)

    assert [hit.payload for hit in collection.search(["warranti"], None, None, 5, 0.8)] == ["b"]
    assert collection.search(["garantia"], None, None, 5, 0.8) == []


def test_a_single_match_scores_as_the_best_there_is() -> None:
    collection: Collection[str] = Collection(4)
    collection.put("a", "a", "en", ["ship", "cost"], None)

    [hit] = collection.search(["ship"], None, None, 5, 0.8)
    assert hit.score == 1.0
