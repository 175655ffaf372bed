"""Retrieval quality through the product's own code, on the evaluation set (issue #10).

    uv run python bench/retrieval/quality.py                 # about a minute; bench/results/retrieval.json
    uv run python bench/retrieval/quality.py --json PATH     # write the JSON elsewhere

candidates.py measured models with a chunker and an index of its own; this measures what ships:
bench/retrieval/kb/ read by `documents.expand` and `documents.read_document` as `zapflow kb ingest`
reads a folder (each document's language detected), indexed in the service's `Collection` with its
`Analyzer` and `LocalEncoder`, and every question answered as the service answers it: its language
detected among the knowledge base's languages by `LanguageDetector`, then lexical, dense or hybrid
search with the service's dense weight. The same questions searched in their known language show
what detection costs. Each product passage is mapped back to evaluate.py's chunk ids by file and
heading path (or FAQ question); the run checks that every evaluation chunk is covered.

Then the `faq` responder's threshold signal: the cosine similarity of the top hit (and BM25's score
in lexical-only mode) for questions answered right, answered wrong and unanswerable, and what each
threshold would do. docs/knowledge-quality.md is the write-up.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `python bench/retrieval/quality.py` puts bench/retrieval/ on the path
    sys.path.insert(0, str(ROOT))

from bench.accounting import percentile  # noqa: E402
from bench.retrieval import evaluate  # noqa: E402
from zapflow.knowledge.documents import TITLE_SEPARATOR, expand, read_document  # noqa: E402
from zapflow.knowledge.encoders import Encoder, Vector  # noqa: E402
from zapflow.knowledge.index import Collection, Scored  # noqa: E402
from zapflow.knowledge.messages import Passage  # noqa: E402
from zapflow.knowledge.service import chunk_key  # noqa: E402
from zapflow.knowledge.settings import EmbeddingSettings  # noqa: E402
from zapflow.knowledge.text import Analyzer, LanguageDetector  # noqa: E402
from zapflow.tenants.model import FaqSpec  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "retrieval.json"
DENSE_WEIGHT: float = EmbeddingSettings.model_fields["dense_weight"].default
BATCH_SIZE: int = EmbeddingSettings.model_fields["batch_size"].default
LOCAL_THREADS: int = EmbeddingSettings.model_fields["local_threads"].default
MIN_SIMILARITY: float = FaqSpec.model_fields["min_similarity"].default
MIN_LEXICAL: float = FaqSpec.model_fields["min_lexical"].default
# Passages asked per search: more than the 5 scored, since a long section cut in pieces gives one
# chunk id several times and the ranking counts it once.
SEARCH_LIMIT = 10
# The retrievers: the dense weight of the fusion; None is lexical only (no question vector at all).
MODES: dict[str, float | None] = {"lexical": None, "dense": 1.0, "hybrid": DENSE_WEIGHT}
# Which language a question is searched in: detected as the service does, or the set's own label.
POLICIES = ("detected", "labelled")
SIMILARITY_THRESHOLDS = tuple(round(0.80 + step / 100, 2) for step in range(11))
LEXICAL_THRESHOLDS = (0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 12.0)


# --- ingest: the product's reader, mapped back to the evaluation's chunk ids -----------------------


@dataclass(frozen=True)
class IngestedPassage:
    """A passage as the product read it, with the evaluation chunk it stands for (None: no chunk)."""

    document: str  # the document name `expand` gives, `<language>/<file>`
    position: int
    passage: Passage
    chunk_id: str | None


@dataclass(frozen=True)
class Coverage:
    """How the product's passages map onto evaluate.py's chunks."""

    passages: int
    chunks: int
    unmapped: list[str]  # product passages with no evaluation chunk (document and title)
    uncovered: list[str]  # evaluation chunk ids no product passage maps to
    language_mismatches: list[str]  # passages whose detected language is not their folder's

    @property
    def complete(self) -> bool:
        return not self.unmapped and not self.uncovered and not self.language_mismatches


def chunk_ids_by_title(chunks: Iterable[evaluate.Chunk]) -> dict[tuple[str, str], str]:
    """(document name, heading path or FAQ question) -> evaluation chunk id."""
    return {(f"{c.language}/{c.document}", TITLE_SEPARATOR.join(c.heading_path)): c.id for c in chunks}


def map_passages(
    documents: Iterable[tuple[str, Sequence[Passage]]], chunks: Sequence[evaluate.Chunk]
) -> tuple[list[IngestedPassage], Coverage]:
    """Each product passage with the chunk id of the same file and the same headings (or FAQ question)."""
    by_title = chunk_ids_by_title(chunks)
    ingested: list[IngestedPassage] = []
    for name, passages in documents:
        for position, passage in enumerate(passages):
            ingested.append(IngestedPassage(name, position, passage, by_title.get((name, passage.title))))
    covered = {p.chunk_id for p in ingested}
    coverage = Coverage(
        passages=len(ingested),
        chunks=len(chunks),
        unmapped=[f"{p.document}: {p.passage.title}" for p in ingested if p.chunk_id is None],
        uncovered=[c.id for c in chunks if c.id not in covered],
        language_mismatches=[
            f"{p.document}#{p.position}: {p.passage.language}"
            for p in ingested
            if p.passage.language != p.document.split("/", 1)[0]
        ],
    )
    return ingested, coverage


def ingest(kb_dir: Path, detector: LanguageDetector) -> list[tuple[str, Sequence[Passage]]]:
    """The knowledge base as `zapflow kb ingest KB_DIR` reads it: documents `<language>/<file>`."""
    documents: list[tuple[str, Sequence[Passage]]] = []
    for path, name in expand([kb_dir]):
        parsed = read_document(path, name, None, detector)
        documents.append((parsed.name, parsed.passages))
    return documents


# --- search, as the service does it ---------------------------------------------------------------


class ProductSearch:
    """The service's search path (Knowledge.search) over one tenant's knowledge base, without NATS."""

    def __init__(
        self,
        ingested: Sequence[IngestedPassage],
        vectors: Sequence[Vector],
        questions: dict[str, Vector],
        analyzer: Analyzer,
        detector: LanguageDetector,
        dimensions: int,
    ) -> None:
        self._analyzer = analyzer
        self._detector = detector
        self._questions = questions
        self.collection: Collection[str | None] = Collection(dimensions)
        for item, vector in zip(ingested, vectors, strict=True):
            terms = analyzer.terms(item.passage.text, item.passage.language)
            key = chunk_key(item.document, item.position)
            self.collection.put(key, item.chunk_id, item.passage.language, terms, vector)

    def language(self, text: str, label: str | None) -> str:
        """The label when given; else detected among the knowledge base's languages, as the service does."""
        return label or self._detector.detect(text, self.collection.languages)

    def search(self, text: str, label: str | None, weight: float | None) -> list[Scored[str | None]]:
        languages = (self.language(text, label),)
        terms = self._analyzer.query_terms(text, languages)
        query = None if weight is None else self._questions[text]
        return self.collection.search(terms, query, languages, SEARCH_LIMIT, weight or 0.0)

    def retriever(self, weight: float | None) -> evaluate.Retriever:
        def ranked(label: str | None, text: str) -> list[str]:
            return distinct_ids(hit.payload for hit in self.search(text, label, weight))

        return ranked


def distinct_ids(chunk_ids: Iterable[str | None]) -> list[str]:
    """Chunk ids in order, each once (pieces of one section share it), passages of no chunk dropped."""
    return [chunk_id for chunk_id in dict.fromkeys(chunk_ids) if chunk_id is not None]


async def embed(
    encoder: Encoder, passages: Sequence[Passage], questions: Iterable[str]
) -> tuple[list[Vector], dict[str, Vector]]:
    """Passage vectors in the service's batches, and one vector per distinct question text."""
    vectors: list[Vector] = []
    for start in range(0, len(passages), BATCH_SIZE):
        vectors.extend(await encoder.passages([p.text for p in passages[start : start + BATCH_SIZE]]))
    asked = {text: await encoder.query(text) for text in dict.fromkeys(questions)}
    return vectors, asked


# --- figures --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recall:
    n: int
    at_1: float
    at_5: float


def recall_groups(outcomes: Sequence[evaluate.Outcome]) -> dict[str, Recall]:
    """Recall overall, per language and per kind (the groups evaluate.report prints)."""
    groups: dict[str, list[evaluate.Outcome]] = {"all": list(outcomes)}
    for language in evaluate.LANGUAGES:
        groups[language] = [o for o in outcomes if o.question.language == language]
    for kind in evaluate.KINDS:
        groups[kind] = [o for o in outcomes if o.question.kind == kind]
    return {
        name: Recall(len(group), round(evaluate.recall(group, 1), 3), round(evaluate.recall(group, 5), 3))
        for name, group in groups.items()
    }


@dataclass(frozen=True)
class Miss:
    question: str
    language: str
    kind: str
    text: str
    rank: int | None  # of the first expected chunk, None: not in the top 5
    got: str  # the chunk ranked first
    relation: str  # what the first is to the expected: same document, other document, other language


def relation(got: str, expected: Sequence[str]) -> str:
    """`same document`, `other document` or `other language`: how near the wrong first answer is."""
    got_document = got.split("#", 1)[0]
    documents = {chunk_id.split("#", 1)[0] for chunk_id in expected}
    if got_document in documents:
        return "same document"
    if got_document.split("/", 1)[0] not in {document.split("/", 1)[0] for document in documents}:
        return "other language"
    return "other document"


def misses(outcomes: Sequence[evaluate.Outcome]) -> list[Miss]:
    found = []
    for outcome in outcomes:
        if outcome.hit(1):
            continue
        question = outcome.question
        got = outcome.ranked[0] if outcome.ranked else ""
        found.append(
            Miss(
                question.id,
                question.language,
                question.kind,
                question.text,
                outcome.rank,
                got,
                relation(got, question.expects) if got else "nothing",
            )
        )
    return found


@dataclass(frozen=True)
class TopHit:
    """The first hit of one question, as the faq responder sees it."""

    question: str
    outcome: str  # right, wrong (answerable, another passage first) or unanswerable
    similarity: float | None
    lexical: float
    chunk_id: str | None
    # The best cosine among the other hits of another chunk: how far the first stands out.
    runner_up: float | None = None


OUTCOMES = ("right", "wrong", "unanswerable")


def top_hits(search: Callable[[str], list[Scored[str | None]]], questions: Iterable[evaluate.Question]) -> list[TopHit]:
    tops = []
    for question in questions:
        hits = search(question.text)
        if not hits:
            tops.append(TopHit(question.id, "unanswerable" if question.unanswerable else "wrong", None, 0.0, None))
            continue
        first = hits[0]
        outcome = "unanswerable" if question.unanswerable else "right" if first.payload in question.expects else "wrong"
        others = [h.similarity for h in hits[1:] if h.payload != first.payload and h.similarity is not None]
        runner_up = max(others) if others else None
        tops.append(TopHit(question.id, outcome, first.similarity, first.lexical, first.payload, runner_up))
    return tops


def auc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """The chance that a positive scores above a negative (ties count half): 0.5 is no signal at all."""
    if not positives or not negatives:
        return None
    above = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return round(above / (len(positives) * len(negatives)), 3)


def separation(tops: Sequence[TopHit]) -> dict[str, float | None]:
    """How well each signal of the top hit tells an answer worth giving (right) from the rest (wrong or
    unanswerable): the area under the ROC curve of the cosine, BM25 and the cosine's lead over the runner-up."""

    def lead(top: TopHit) -> float | None:
        if top.similarity is None or top.runner_up is None:
            return None
        return top.similarity - top.runner_up

    signals: dict[str, Callable[[TopHit], float | None]] = {
        "cosine": lambda top: top.similarity,
        "bm25": lambda top: top.lexical,
        "cosine lead over the runner-up": lead,
    }
    found: dict[str, float | None] = {}
    for name, signal in signals.items():
        scored = [(t.outcome, signal(t)) for t in tops]
        right = [value for outcome, value in scored if outcome == "right" and value is not None]
        rest = [value for outcome, value in scored if outcome != "right" and value is not None]
        found[name] = auc(right, rest)
    return found


@dataclass(frozen=True)
class Distribution:
    n: int
    min: float | None
    p10: float | None
    p25: float | None
    median: float | None
    p75: float | None
    p90: float | None
    max: float | None

    @classmethod
    def of(cls, values: Iterable[float]) -> Distribution:
        ordered = sorted(values)
        if not ordered:
            return cls(0, None, None, None, None, None, None, None)

        def at(p: float) -> float:
            return round(percentile(ordered, p), 3)

        median = round(statistics.median(ordered), 3)
        return cls(len(ordered), at(0), at(10), at(25), median, at(75), at(90), round(ordered[-1], 3))


@dataclass(frozen=True)
class ThresholdRow:
    """What a threshold on the top hit's score does to the questions."""

    threshold: float
    answered_right: float  # share of answerable questions answered with a right passage
    answered_wrong: float  # share of answerable questions answered with a wrong passage
    unanswerable_answered: float  # share of unanswerable questions answered (all wrongly)
    good_decisions: float  # share of all questions handled well: answered right, or sent to the fallback
    # when the first passage is wrong or the question unanswerable


def threshold_rows(scores: Sequence[tuple[str, float]], thresholds: Iterable[float]) -> list[ThresholdRow]:
    """(outcome, score) per question -> one row per threshold (answered: score >= threshold)."""
    answerable = sum(outcome != "unanswerable" for outcome, _ in scores)
    unanswerable = len(scores) - answerable
    rows = []
    for threshold in thresholds:
        answered = Counter(outcome for outcome, score in scores if score >= threshold)
        falling_back = Counter(outcome for outcome, score in scores if score < threshold)
        good = answered["right"] + falling_back["wrong"] + falling_back["unanswerable"]
        rows.append(
            ThresholdRow(
                threshold=threshold,
                answered_right=round(answered["right"] / answerable, 3) if answerable else 0.0,
                answered_wrong=round(answered["wrong"] / answerable, 3) if answerable else 0.0,
                unanswerable_answered=round(answered["unanswerable"] / unanswerable, 3) if unanswerable else 0.0,
                good_decisions=round(good / len(scores), 3) if scores else 0.0,
            )
        )
    return rows


@dataclass(frozen=True)
class ThresholdStudy:
    signal: str  # what the score is
    current_default: float
    distributions: dict[str, Distribution]  # by outcome
    rows: list[ThresholdRow]
    unanswerable: dict[str, float]  # question id -> its top score
    tops: list[TopHit]  # every question's first hit, for a closer look


def threshold_study(signal: str, default: float, tops: Sequence[TopHit], thresholds: Iterable[float]) -> ThresholdStudy:
    def score(top: TopHit) -> float:
        return top.lexical if signal == "bm25" else (top.similarity or 0.0)

    scored = [(top.outcome, score(top)) for top in tops]
    return ThresholdStudy(
        signal=signal,
        current_default=default,
        distributions={outcome: Distribution.of(s for o, s in scored if o == outcome) for outcome in OUTCOMES},
        rows=threshold_rows(scored, thresholds),
        unanswerable={top.question: round(score(top), 3) for top in tops if top.outcome == "unanswerable"},
        tops=list(tops),
    )


@dataclass(frozen=True)
class Detection:
    """How often the detected language is not the question's own, per kind."""

    questions: int
    wrong: int
    wrong_by_kind: dict[str, int]
    examples: list[str]


def detection(search: ProductSearch, questions: Sequence[evaluate.Question]) -> Detection:
    wrong = [(q, search.language(q.text, None)) for q in questions if search.language(q.text, None) != q.language]
    return Detection(
        questions=len(questions),
        wrong=len(wrong),
        wrong_by_kind=dict(Counter(q.kind for q, _ in wrong)),
        examples=[f"{q.id} ({q.kind}) detected {found}: {q.text!r}" for q, found in wrong],
    )


@dataclass(frozen=True)
class QualityReport:
    meta: dict[str, Any]
    config: dict[str, Any]
    coverage: Coverage
    detection: Detection
    recall: dict[str, dict[str, dict[str, Recall]]]  # policy -> mode -> group -> recall
    misses: dict[str, list[Miss]]  # mode (detected language) -> misses at 1
    faq_similarity: ThresholdStudy  # hybrid, detected language: the top hit's cosine
    faq_lexical: ThresholdStudy  # lexical-only service: the top hit's BM25
    faq_separation: dict[str, float | None]  # hybrid: AUC of each signal, right against the rest

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- the report -----------------------------------------------------------------------------------


def render(report: QualityReport) -> str:
    lines = [f"# Retrieval quality through the product ({report.meta['commit']}, {report.meta['date']})", ""]
    coverage = report.coverage
    verdict = "every evaluation chunk is covered" if coverage.complete else "INCOMPLETE"
    lines += [
        f"Ingest: {coverage.passages} product passages for {coverage.chunks} evaluation chunks; {verdict} "
        f"(unmapped passages {len(coverage.unmapped)}, uncovered chunks {len(coverage.uncovered)}, "
        f"passages in another language than their folder {len(coverage.language_mismatches)}).",
        *(f"- unmapped: {item}" for item in coverage.unmapped),
        *(f"- uncovered: {item}" for item in coverage.uncovered),
        *(f"- language: {item}" for item in coverage.language_mismatches),
        "",
        f"Language detection: {report.detection.wrong} of {report.detection.questions} questions detected in "
        f"another language than their own ({_counts(report.detection.wrong_by_kind)}).",
        *(f"- {example}" for example in report.detection.examples),
        "",
    ]
    groups = ["all", *evaluate.LANGUAGES, *evaluate.KINDS]
    for policy, by_mode in report.recall.items():
        how = "detected as the service does" if policy == "detected" else "labelled (the set's own language)"
        lines += [f"## Recall@1 / recall@5, language {how}", ""]
        lines += ["| retriever | " + " | ".join(groups) + " |", "|---|" + "---:|" * len(groups)]
        for mode, recall in by_mode.items():
            cells = [f"{recall[g].at_1:.3f} / {recall[g].at_5:.3f}" for g in groups]
            lines.append(f"| {mode} | " + " | ".join(cells) + " |")
        lines.append("")
    n = report.recall["detected"]["hybrid"]["all"].n
    lines.append(f"(answerable questions: {n}; targets: hybrid recall@1 >= 0.85 and recall@5 >= 0.97)")
    lines.append("")
    for mode, found in report.misses.items():
        lines += [f"## Misses at 1, {mode}, detected language ({len(found)})", ""]
        lines.append(
            "By relation: "
            + _counts(Counter(m.relation for m in found))
            + "; by kind: "
            + _counts(Counter(m.kind for m in found))
        )
        lines.append("")
        for miss in found:
            where = f"rank {miss.rank}" if miss.rank else "not in top 5"
            lines.append(f"- {miss.question} ({miss.kind}, {where}, {miss.relation}): {miss.text!r} got `{miss.got}`")
        lines.append("")
    for study in (report.faq_similarity, report.faq_lexical):
        lines += _study(study)
    lines += [
        "## Which signal of the top hit (hybrid) tells a right answer from the rest",
        "",
        "Area under the ROC curve, answered right against answered wrong or unanswerable (0.5: no signal): "
        + ", ".join(f"{name} {value}" for name, value in report.faq_separation.items()),
    ]
    return "\n".join(lines)


def _study(study: ThresholdStudy) -> list[str]:
    title = (
        "cosine similarity of the top hit (hybrid)"
        if study.signal == "cosine"
        else "BM25 of the top hit (lexical only)"
    )
    lines = [f"## The faq threshold: {title}; current default {study.current_default}", ""]
    lines += [
        "| top hit | n | min | p10 | p25 | median | p75 | p90 | max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for outcome, d in study.distributions.items():
        cells = [d.min, d.p10, d.p25, d.median, d.p75, d.p90, d.max]
        lines.append(f"| {outcome} | {d.n} | " + " | ".join("" if c is None else f"{c:.3f}" for c in cells) + " |")
    lines += [
        "",
        "| threshold | answerable answered right | answered wrong | unanswerable answered | good decisions |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in study.rows:
        lines.append(
            f"| {row.threshold:g} | {row.answered_right:.3f} | {row.answered_wrong:.3f} | "
            f"{row.unanswerable_answered:.3f} | {row.good_decisions:.3f} |"
        )
    lines += ["", "Unanswerable: " + ", ".join(f"{q} {s:.3f}" for q, s in sorted(study.unanswerable.items())), ""]
    return lines


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items(), key=lambda item: -item[1])) or "none"


# --- the run --------------------------------------------------------------------------------------


def measure() -> QualityReport:
    from bench import machine  # the run's commit and date, as the bench's phases record them
    from zapflow.knowledge.encoders import LocalEncoder

    detector = LanguageDetector()
    analyzer = Analyzer()
    documents = ingest(evaluate.KB_DIR, detector)
    ingested, coverage = map_passages(documents, evaluate.load_kb())
    questions = evaluate.load_questions()
    encoder = LocalEncoder(LOCAL_THREADS)

    async def vectors() -> tuple[list[Vector], dict[str, Vector]]:
        try:
            return await embed(encoder, [item.passage for item in ingested], [q.text for q in questions])
        finally:
            await encoder.aclose()

    print(f"embedding {len(ingested)} passages and {len(questions)} questions with {encoder.model} ...", flush=True)
    passage_vectors, question_vectors = asyncio.run(vectors())
    search = ProductSearch(ingested, passage_vectors, question_vectors, analyzer, detector, encoder.dimensions)

    recall: dict[str, dict[str, dict[str, Recall]]] = {}
    found_misses: dict[str, list[Miss]] = {}
    for policy in POLICIES:
        recall[policy] = {}
        for mode, weight in MODES.items():
            outcomes = evaluate.evaluate(search.retriever(weight), questions, language_hint=policy == "labelled")
            recall[policy][mode] = recall_groups(outcomes)
            if policy == "detected":
                found_misses[mode] = misses(outcomes)

    hybrid_tops = top_hits(lambda text: search.search(text, None, DENSE_WEIGHT), questions)
    lexical_tops = top_hits(lambda text: search.search(text, None, None), questions)
    meta = machine.describe()
    return QualityReport(
        meta={
            "date": meta.date,
            "commit": meta.commit,
            "cpu": meta.cpu,
            "command": "uv run python bench/retrieval/quality.py",
        },
        config={
            "model": encoder.model,
            "dense_weight": DENSE_WEIGHT,
            "batch_size": BATCH_SIZE,
            "search_limit": SEARCH_LIMIT,
            "questions": len(questions),
            "answerable": sum(not q.unanswerable for q in questions),
        },
        coverage=coverage,
        detection=detection(search, questions),
        recall=recall,
        misses=found_misses,
        faq_similarity=threshold_study("cosine", MIN_SIMILARITY, hybrid_tops, SIMILARITY_THRESHOLDS),
        faq_lexical=threshold_study("bm25", MIN_LEXICAL, lexical_tops, LEXICAL_THRESHOLDS),
        faq_separation=separation(hybrid_tops),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"where the JSON goes (default {RESULTS})")
    options = parser.parse_args(argv)
    report = measure()
    options.json.parent.mkdir(parents=True, exist_ok=True)
    options.json.write_text(json.dumps(report.as_json(), indent=2, ensure_ascii=False) + "\n")
    print(render(report))
    print(f"\nJSON report: {options.json}")
    return 0 if report.coverage.complete else 1


if __name__ == "__main__":
    sys.exit(main())
