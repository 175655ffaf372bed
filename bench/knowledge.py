"""The knowledge phase's data and figures: synthetic knowledge bases, questions, the load's schedule,
percentiles, the service's histogram, memory per chunk, and the markdown report.

Embedding 50,000 passages with e5 takes about 40 minutes on this box, so the phase synthesises
them: passages made from the evaluation set's (bench/retrieval/kb) by swapping words for others of
the same language, each with a product code of its own, and vectors made from the real e5 vectors
of the passages they come from, perturbed and normalised, so the cosines have e5's spread. They are
written to SQL as an ingest would leave them, and the service loads them at start as after any
restart. Everything here is pure (numpy and the standard library), so tests/unit/test_bench_knowledge.py
checks it without a model or a server.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from bench.accounting import percentile
from zapflow.knowledge.messages import Passage

Matrix = npt.NDArray[np.float32]
WORD = re.compile(r"[^\W\d_]{3,}")
# How far a synthetic vector is from its source's: the norm of the noise added to a unit vector
# (0.25..0.6 gives cosines of about 0.86..0.97 to the source, the spread of e5 neighbours).
NOISE_NORM = (0.25, 0.6)
SWAP_SHARE = 0.25  # words of a source passage replaced by other words of its language


# --- synthetic knowledge bases --------------------------------------------------------------------


class SyntheticCorpus:
    """Passages like a real knowledge base's, made from real ones; the same seed, the same passages."""

    def __init__(self, sources: Sequence[Passage]) -> None:
        if not sources:
            raise ValueError("at least one source passage")
        self._sources = list(sources)
        self._vocabulary: dict[str, list[str]] = {}
        for passage in sources:
            self._vocabulary.setdefault(passage.language, []).extend(WORD.findall(passage.text))
        for language, words in self._vocabulary.items():
            self._vocabulary[language] = sorted(set(words))

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(sorted(self._vocabulary))

    def passages(
        self, count: int, languages: Iterable[str], seed: int, first_code: int = 0
    ) -> tuple[list[Passage], list[int]]:
        """`count` distinct passages in `languages`, each naming a product code of its own from `first_code`,
        and the position of the source passage each was made from (its vector is made from that one's)."""
        wanted = set(languages)
        origins = [i for i, passage in enumerate(self._sources) if passage.language in wanted]
        if not origins:
            raise ValueError(f"no source passage in {sorted(wanted)}")
        rng = random.Random(seed)
        picked = [rng.choice(origins) for _ in range(count)]
        return [self._variant(self._sources[i], first_code + n, rng) for n, i in enumerate(picked)], picked

    def _variant(self, source: Passage, code: int, rng: random.Random) -> Passage:
        vocabulary = self._vocabulary[source.language]
        words = [
            rng.choice(vocabulary) if WORD.fullmatch(word) and rng.random() < SWAP_SHARE else word
            for word in source.body.split()
        ]
        title = f"{source.title} > {rng.choice(vocabulary).capitalize()} CV-{code:06d}"
        return Passage(title=title, body=f"{' '.join(words)} (CV-{code:06d})", language=source.language)


def perturbed(vectors: Matrix, rng: np.random.Generator) -> Matrix:
    """Unit vectors near the given ones: each plus noise of a random norm in NOISE_NORM, normalised."""
    noise = rng.standard_normal(vectors.shape).astype(np.float32)
    scale = rng.uniform(*NOISE_NORM, size=(len(vectors), 1)).astype(np.float32)
    noise *= scale / np.linalg.norm(noise, axis=1, keepdims=True)
    moved = vectors / np.linalg.norm(vectors, axis=1, keepdims=True) + noise
    unit: Matrix = (moved / np.linalg.norm(moved, axis=1, keepdims=True)).astype(np.float32)
    return unit


def distinct_questions(texts: Sequence[str], count: int, seed: int, first_number: int = 100_000) -> list[str]:
    """`count` questions, each one of the texts with an order number of its own appended (from
    `first_number`): given disjoint ranges, no two questions of any tenant are the same text, so the
    query cache (keyed by the text alone) never answers for the model."""
    rng = random.Random(seed)
    return [f"{rng.choice(texts)} (pedido {first_number + n})" for n in range(count)]


# --- the load -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Search:
    """One search of the schedule: when it is due (s from the start), for which tenant, what it asks."""

    at: float
    tenant: str
    text: str


def schedule(
    rate: float, duration: float, shares: Mapping[str, float], questions: Mapping[str, Sequence[str]], seed: int
) -> list[Search]:
    """An open-loop schedule: search i is due at i / rate, for a tenant drawn by its share, asking that
    tenant's questions in turn (round robin, so a short list repeats and a long one never does)."""
    rng = random.Random(seed)
    tenants, weights = list(shares), list(shares.values())
    asked = dict.fromkeys(tenants, 0)
    searches = []
    for i in range(int(rate * duration)):
        tenant = rng.choices(tenants, weights)[0]
        texts = questions[tenant]
        searches.append(Search(i / rate, tenant, texts[asked[tenant] % len(texts)]))
        asked[tenant] += 1
    return searches


# --- figures --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Percentiles:
    """A latency distribution in milliseconds (nearest rank); None without samples."""

    count: int
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    @classmethod
    def of(cls, seconds: Iterable[float]) -> Percentiles:
        values = sorted(seconds)
        if not values:
            return cls(0, None, None, None, None, None)

        def ms(value: float) -> float:
            return round(value * 1000, 2)

        return cls(
            count=len(values),
            mean_ms=ms(math.fsum(values) / len(values)),
            p50_ms=ms(percentile(values, 50)),
            p95_ms=ms(percentile(values, 95)),
            p99_ms=ms(percentile(values, 99)),
            max_ms=ms(values[-1]),
        )


def _samples(exposition: str, name: str, labels: Mapping[str, str]) -> Iterator[Sample]:
    """The samples of that name whose labels include `labels`, parsed by prometheus_client."""
    for family in text_string_to_metric_families(exposition):
        for found in family.samples:
            if found.name == name and all(found.labels.get(key) == value for key, value in labels.items()):
                yield found


def histogram(exposition: str, name: str, labels: Mapping[str, str]) -> dict[float, float]:
    """The cumulative buckets (upper bound in s -> count) of one labelled histogram in Prometheus text."""
    buckets: dict[float, float] = {}
    for bucket in _samples(exposition, f"{name}_bucket", labels):
        bound = float(bucket.labels["le"])
        buckets[bound] = buckets.get(bound, 0.0) + bucket.value
    return buckets


def sample(exposition: str, name: str, labels: Mapping[str, str]) -> float | None:
    """The value of one labelled sample (a counter, a histogram's _sum or _count) in Prometheus text."""
    return next((found.value for found in _samples(exposition, name, labels)), None)


def bucket_delta(before: Mapping[float, float], after: Mapping[float, float]) -> dict[float, float]:
    """What a run added to a cumulative histogram."""
    return {bound: count - before.get(bound, 0.0) for bound, count in after.items()}


def bucket_percentile(cumulative: Mapping[float, float], p: float) -> float | None:
    """The upper bound (s) of the bucket holding the p-th percentile; None when empty, inf past the last bound."""
    bounds = sorted(cumulative)
    if not bounds or not cumulative[bounds[-1]]:
        return None
    rank = math.ceil(p / 100 * cumulative[bounds[-1]])
    return next(bound for bound in bounds if cumulative[bound] >= rank)


def anonymous_bytes(status: str) -> int:
    """RssAnon of a /proc/<pid>/status text, in bytes: the heap, without the model's memory-mapped weights."""
    match = re.search(r"^RssAnon:\s+(\d+) kB$", status, re.MULTILINE)
    if match is None:
        raise ValueError("no RssAnon line (not Linux?)")
    return int(match.group(1)) * 1024


def mib_per_10k(points: Sequence[tuple[int, int]]) -> float | None:
    """The least-squares slope of RSS (bytes) over chunks, in MiB per 10,000 chunks."""
    if len({chunks for chunks, _ in points}) < 2:
        return None
    xs = np.array([chunks for chunks, _ in points], dtype=np.float64)
    ys = np.array([rss for _, rss in points], dtype=np.float64)
    slope = float(np.polyfit(xs, ys, 1)[0])
    return round(slope * 10_000 / 2**20, 1)


# --- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    name: str
    chunks: int
    languages: list[str]


@dataclass(frozen=True)
class Loaded:
    """One start of the service: what it loaded and what that cost."""

    label: str
    backend: str  # local, none
    chunks: int
    ready_s: float | None  # from the process's start until /readyz answered; None: not a start
    load_s: float | None  # the service's own "knowledge index loaded" time
    rss_mib: float  # after loading and a few searches
    anon_mib: float  # of which anonymous memory (RssAnon): everything but the model's mapped weights


@dataclass(frozen=True)
class LoadRun:
    """Searches at a fixed rate across tenants, through NATS."""

    label: str
    backend: str
    questions: str  # distinct (every question new) or repeated (the query cache answers)
    rate_per_s: float
    duration_s: float
    searches: int
    errors: int
    late_ms_p99: float  # how late the generator sent (coordinated omission check)
    big_tenant: Percentiles  # end to end: scheduled time to reply
    other_tenants: Percentiles
    service_p50_ms_bucket: float | None  # zapflow_knowledge_search_seconds for the big tenant: bucket bounds
    service_p99_ms_bucket: float | None
    service_mean_ms: float | None
    cpu_pct_of_one_core: float  # of the service during the run


@dataclass(frozen=True)
class Breakdown:
    """Where one search of the big tenant spends its time, timed in the bench's process on the same data."""

    chunks: int
    detect_language: Percentiles
    query_terms: Percentiles
    question_embedding: Percentiles
    collection_search_hybrid: Percentiles
    collection_search_lexical: Percentiles
    search_cached: Percentiles  # Knowledge.search with the question in the cache
    search_uncached: Percentiles


@dataclass(frozen=True)
class Ingest:
    backend: str
    chunks: int
    seconds: float
    chunks_per_s: float
    embedded: int


@dataclass(frozen=True)
class KnowledgeResult:
    meta: dict[str, str]
    config: dict[str, object]
    tenants: list[Tenant]
    starts: list[Loaded]
    rss_mib_per_10k_chunks: float | None  # slopes over the local starts
    anon_mib_per_10k_chunks: float | None
    vector_mib_per_10k_chunks: float
    runs: list[LoadRun]
    breakdown: Breakdown | None
    ingests: list[Ingest]
    wall_s: float
    notes: list[str] = field(default_factory=list)


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def render(result: KnowledgeResult) -> str:
    """The report of a knowledge run, in markdown."""
    meta, config = result.meta, result.config
    lines = [
        f"# Knowledge: search, ingest and memory ({meta['commit']}, {meta['date']})",
        "",
        f"{meta['cpu']}, {meta['cores']} cores, load average {meta['load_average']}; model {config['model']}; "
        f"the run took {result.wall_s:.0f} s.",
        "",
        "Tenants: " + ", ".join(f"{t.name} {t.chunks:,} chunks ({'/'.join(t.languages)})" for t in result.tenants),
        "",
        "## Search through NATS (p99 target: 20 ms for the big tenant)",
        "",
        "| run | backend | questions | rate/s | searches | errors | big tenant p50 / p95 / p99 / max (ms) "
        "| other tenants p50 / p99 (ms) | service-side, big tenant: p50 / p99 bucket, mean (ms) | service CPU "
        "| sent late, p99 (ms) |",
        "|---|---|---|---:|---:|---:|---|---|---|---:|---:|",
    ]
    for run in result.runs:
        big, other = run.big_tenant, run.other_tenants
        lines.append(
            f"| {run.label} | {run.backend} | {run.questions} | {run.rate_per_s:g} | {run.searches} | {run.errors} "
            f"| {_ms(big.p50_ms)} / {_ms(big.p95_ms)} / {_ms(big.p99_ms)} / {_ms(big.max_ms)} "
            f"| {_ms(other.p50_ms)} / {_ms(other.p99_ms)} "
            f"| ≤ {_ms(run.service_p50_ms_bucket)} / ≤ {_ms(run.service_p99_ms_bucket)}, {_ms(run.service_mean_ms)} "
            f"| {run.cpu_pct_of_one_core:g}% | {run.late_ms_p99:g} |"
        )
    if result.breakdown is not None:
        b = result.breakdown
        lines += [
            "",
            f"## One search of the big tenant ({b.chunks:,} chunks), in process (ms)",
            "",
            "| part | p50 | p95 | p99 | max |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, figures in (
            ("detect the language", b.detect_language),
            ("question terms", b.query_terms),
            ("question embedding (e5, one thread)", b.question_embedding),
            ("Collection.search, hybrid", b.collection_search_hybrid),
            ("Collection.search, lexical", b.collection_search_lexical),
            ("Knowledge.search, question cached", b.search_cached),
            ("Knowledge.search, question new", b.search_uncached),
        ):
            cells = (figures.p50_ms, figures.p95_ms, figures.p99_ms, figures.max_ms)
            lines.append(f"| {name} | " + " | ".join(_ms(cell) for cell in cells) + " |")
    lines += [
        "",
        "## Starts: load time and memory",
        "",
        "| start | backend | chunks | ready after (s) | index loaded in (s) | RSS (MiB) | of which anonymous (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for start in result.starts:
        lines.append(
            f"| {start.label} | {start.backend} | {start.chunks:,} | {_ms(start.ready_s)} | {_ms(start.load_s)} "
            f"| {start.rss_mib:.0f} | {start.anon_mib:.0f} |"
        )
    lines += [
        "",
        f"Memory per 10,000 chunks (slope over the local starts): {_ms(result.anon_mib_per_10k_chunks)} MiB of "
        f"anonymous memory ({_ms(result.rss_mib_per_10k_chunks)} MiB of RSS), of which "
        f"{result.vector_mib_per_10k_chunks:g} MiB are the vectors themselves.",
        "",
        "## Ingest",
        "",
        "| backend | chunks | seconds | chunks/s | embedded |",
        "|---|---:|---:|---:|---:|",
    ]
    for ingest in result.ingests:
        lines.append(
            f"| {ingest.backend} | {ingest.chunks:,} | {ingest.seconds:.1f} | {ingest.chunks_per_s:g} "
            f"| {ingest.embedded:,} |"
        )
    lines += ["", *(f"- {note}" for note in result.notes)]
    return "\n".join(lines)
