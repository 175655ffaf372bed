"""The knowledge phase: search latency for a tenant with 50,000 chunks while other tenants are searched,
ingest throughput, load time and memory per chunk of `zapflow embedding` (issue #10).

    uv run python bench/run.py --phase knowledge           # about 5 minutes; bench/results/knowledge.json
    uv run python bench/run.py --phase knowledge --quick   # 5,000 chunks, short runs (about 2 minutes)

nats-server, redis-server and the store (SQLite, migrated) as the other phases run them; then, in
order, each step a `zapflow embedding` process of its own on the same store:

1. Local model, empty store: its RSS; then the shop's real knowledge base (bench/retrieval/kb) and
   synthetic passages from it are ingested through KnowledgeClient (embed, then commit), so every
   chunk is embedded for real: ingest chunks/s. The vectors e5 gave the real passages are read
   back from SQL: the synthetic tenants' vectors are made from them. A fresh process loads the
   shop (the first memory point: after an ingest, the model's working memory would count).
2. The big tenant's first 10,000 synthetic chunks are written to SQL (the store's own
   replace_document and save_vectors, as an ingest leaves them); a new process loads them.
3. The other 40,000, and three smaller tenants; a new process loads all of it. Searches through
   NATS at a fixed rate across the tenants: every question new (the model runs), then a few
   questions repeated (the query cache answers). Service-side time from its /metrics.
4. The same store with `ZAPFLOW_EMBEDDING_BACKEND=none` (lexical only): load, the same searches,
   and the lexical ingest rate.
5. In the bench's process, on the same store: where one search of the big tenant spends its time.

RSS is read after each start's warm-up searches; memory per 10,000 chunks is the slope over the
local starts that searched. bench/knowledge.py makes the data and the figures; docs/benchmark.md
keeps them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import nats
import numpy as np
import psutil
from nats.aio.client import Client as NATS

from bench import knowledge, machine
from bench.knowledge import (
    Breakdown,
    Ingest,
    KnowledgeResult,
    Loaded,
    LoadRun,
    Percentiles,
    Search,
    SyntheticCorpus,
    Tenant,
)
from bench.results import to_json
from bench.retrieval import evaluate
from bench.stack import BenchError, Ports, Stack
from zapflow.knowledge.client import KnowledgeClient, KnowledgeError
from zapflow.knowledge.documents import expand, read_document
from zapflow.knowledge.encoders import Matrix
from zapflow.knowledge.messages import CommitRequest, EmbedRequest, Passage, SearchRequest
from zapflow.knowledge.settings import EmbeddingSettings
from zapflow.knowledge.store import KnowledgeStore, passage_hash
from zapflow.knowledge.text import LanguageDetector
from zapflow.platform import metrics, servers
from zapflow.platform.logging import configure_logging
from zapflow.platform.servers import free_port
from zapflow.platform.settings import CoreSettings
from zapflow.platform.supervisor import CommandFailed, StartError, Supervised, run_to_completion, settings_environment
from zapflow.store.engine import create_engine, sqlite_url

NAME = "knowledge"
RESULTS = Path(__file__).resolve().parents[1] / "results" / "knowledge.json"
SHOP = "shop"  # the real knowledge base, ingested through the service
BIG = "big"  # the tenant with 50,000 chunks, in Portuguese only: every search scores all of them
SEARCH_METRIC = next(iter(metrics.KNOWLEDGE_SEARCH_SECONDS.describe())).name
DOCUMENT_CHUNKS = 500  # synthetic passages per document
EMBED_REQUEST = 64  # passages per embed request of an ingest, as a progress bar would send them
WARM_UP_SEARCHES = 10
REPEATED_QUESTIONS = 20
BIG_SHARE = 0.5  # of the searches; the rest spread evenly over the other tenants
START_TIMEOUT_S = 600.0
Backend = Literal["local", "none"]


@dataclass(frozen=True)
class KnowledgeOptions:
    quick: bool
    big_chunks: int
    small_chunks: tuple[int, ...]
    ingest_chunks: int
    lexical_ingest_chunks: int
    rate: float
    duration: float
    repeated_duration: float
    seed: int
    json: Path
    keep: bool


def parse_options(argv: Sequence[str] | None) -> KnowledgeOptions:
    parser = argparse.ArgumentParser(
        prog="bench/run.py --phase knowledge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--phase", choices=(NAME,), default=NAME)
    parser.add_argument("--quick", action="store_true", help="5,000 chunks and short runs")
    parser.add_argument("--big-chunks", type=int, default=50_000, help="chunks of the big tenant (default 50000)")
    parser.add_argument(
        "--small-chunks",
        default="1000,2000,5000",
        help="chunks of each smaller synthetic tenant (default 1000,2000,5000)",
    )
    parser.add_argument(
        "--ingest-chunks", type=int, default=500, help="chunks ingested with real embedding (default 500)"
    )
    parser.add_argument("--lexical-ingest-chunks", type=int, default=5_000, help="chunks ingested without a model")
    parser.add_argument("--rate", type=float, default=10, help="searches per second across the tenants (default 10)")
    parser.add_argument(
        "--duration", type=float, default=60, help="seconds of searches with new questions (default 60)"
    )
    parser.add_argument(
        "--repeated-duration", type=float, default=30, help="seconds of repeated questions (default 30)"
    )
    parser.add_argument("--seed", type=int, default=1, help="the same seed makes the same data and questions")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"where the JSON goes (default {RESULTS})")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (store, logs) afterwards")
    args = parser.parse_args(argv)
    try:
        small = tuple(int(part) for part in args.small_chunks.split(",") if part.strip())
    except ValueError:
        parser.error("--small-chunks takes numbers separated by commas, e.g. 1000,2000,5000")
    if args.quick:
        args.big_chunks = min(args.big_chunks, 5_000)
        small = tuple(min(size, 500) for size in small)
        args.ingest_chunks = min(args.ingest_chunks, 200)
        args.lexical_ingest_chunks = min(args.lexical_ingest_chunks, 1_000)
        args.duration, args.repeated_duration = min(args.duration, 8), min(args.repeated_duration, 5)
    if args.big_chunks < 10_000 and not args.quick:
        parser.error("--big-chunks must be at least 10000 (the 10,000-chunk start is one of the memory points)")
    if args.rate <= 0 or args.duration <= 0 or args.repeated_duration <= 0 or any(size <= 0 for size in small):
        parser.error("rates, durations and tenant sizes must be positive")
    return KnowledgeOptions(
        quick=args.quick,
        big_chunks=args.big_chunks,
        small_chunks=small,
        ingest_chunks=args.ingest_chunks,
        lexical_ingest_chunks=args.lexical_ingest_chunks,
        rate=args.rate,
        duration=args.duration,
        repeated_duration=args.repeated_duration,
        seed=args.seed,
        json=args.json,
        keep=args.keep,
    )


# --- the embedding service as a process -------------------------------------------------------------


@dataclass
class EmbeddingProcess:
    process: Supervised
    port: int
    backend: str
    ready_s: float

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def rss(self) -> int:
        return int(psutil.Process(self.process.pid).memory_info().rss)

    def anonymous(self) -> int:
        return knowledge.anonymous_bytes(Path(f"/proc/{self.process.pid}/status").read_text())

    def cpu_s(self) -> float:
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def load_s(self) -> float | None:
        """The service's own "knowledge index loaded" time, from its JSON log."""
        for line in self.process.log_tail(1_000_000).splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("event") == "knowledge index loaded":
                    return float(entry["seconds"])
        return None

    async def search_histogram(self, tenant: str) -> tuple[dict[float, float], float, float]:
        """The big tenant's search histogram: cumulative buckets, sum (s) and count."""
        async with httpx.AsyncClient(timeout=10) as http:
            exposition = (await http.get(self.metrics_url)).text
        labels = {"tenant": tenant, "collection": "knowledge"}
        buckets = knowledge.histogram(exposition, SEARCH_METRIC, labels)
        total = knowledge.sample(exposition, f"{SEARCH_METRIC}_sum", labels) or 0.0
        count = knowledge.sample(exposition, f"{SEARCH_METRIC}_count", labels) or 0.0
        return buckets, total, count

    def stop(self) -> None:
        self.process.stop()


def start_embedding(stack: Stack, label: str, backend: Backend) -> EmbeddingProcess:
    """`zapflow embedding` on the stack's store, logging at INFO (its load time is a log line)."""
    port = free_port()
    env = {
        **stack.env(),
        **settings_environment(CoreSettings.model_construct(log_level="INFO")),
        **settings_environment(EmbeddingSettings.model_construct(backend=backend, embed_turns=False)),
    }
    name = f"embedding-{label}"
    spec = servers.zapflow_service(name, "embedding", port, log=stack.logs / f"{name}.log", env=env, cwd=stack.workdir)
    started = time.perf_counter()
    try:
        (process,) = stack.supervisor.start(dataclasses.replace(spec, start_timeout_s=START_TIMEOUT_S))
    except StartError as error:
        raise BenchError(str(error)) from None
    return EmbeddingProcess(process, port, backend, round(time.perf_counter() - started, 2))


def migrate(stack: Stack) -> None:
    try:
        run_to_completion("zapflow db upgrade", servers.zapflow_command("db", "upgrade"), stack.env(), stack.workdir)
    except CommandFailed as error:
        raise BenchError(str(error)) from None


# --- data -------------------------------------------------------------------------------------------


def kb_passages() -> list[tuple[str, list[Passage]]]:
    """The evaluation set's knowledge base as `zapflow kb ingest bench/retrieval/kb` reads it."""
    detector = LanguageDetector()
    return [(name, read_document(path, name, None, detector).passages) for path, name in expand([evaluate.KB_DIR])]


def documents_of(prefix: str, passages: Sequence[Passage]) -> list[tuple[str, list[Passage]]]:
    """Synthetic passages as documents of DOCUMENT_CHUNKS passages each."""
    return [
        (f"{prefix}/part-{start // DOCUMENT_CHUNKS:04d}.md", list(passages[start : start + DOCUMENT_CHUNKS]))
        for start in range(0, len(passages), DOCUMENT_CHUNKS)
    ]


def content_hash(passages: Sequence[Passage]) -> str:
    digest = hashlib.sha256()
    for passage in passages:
        digest.update(passage_hash(passage).encode())
    return digest.hexdigest()


async def ingest(
    client: KnowledgeClient, tenant: str, documents: Sequence[tuple[str, list[Passage]]], backend: str
) -> Ingest:
    """Documents through the service as an ingest sends them: embed in requests (progress), then commit."""
    started = time.perf_counter()
    embedded = 0
    for name, passages in documents:
        for start in range(0, len(passages), EMBED_REQUEST):
            batch = passages[start : start + EMBED_REQUEST]
            embedded += (await client.embed(tenant, EmbedRequest(passages=batch))).embedded
        request = CommitRequest(name=name, kind="markdown", content_hash=content_hash(passages), passages=passages)
        embedded += (await client.commit(tenant, request)).embedded
    seconds = time.perf_counter() - started
    chunks = sum(len(passages) for _, passages in documents)
    return Ingest(backend, chunks, round(seconds, 1), round(chunks / seconds, 1), embedded)


async def write_tenant(
    store: KnowledgeStore, tenant: str, documents: Sequence[tuple[str, list[Passage]]], vectors: Matrix, model: str
) -> None:
    """Rows as an ingest leaves them, written by the store's own code, without running the model."""
    offset = 0
    for name, passages in documents:
        await store.replace_document(tenant, name, "markdown", "cli", content_hash(passages), passages, 10**9)
        hashes = [passage_hash(p) for p in passages]
        await store.save_vectors(tenant, model, hashes, vectors[offset : offset + len(passages)])
        offset += len(passages)


async def source_vectors(store: KnowledgeStore, tenant: str, model: str, sources: Sequence[Passage]) -> Matrix:
    """The vectors the service gave the source passages, read back from SQL in the sources' order."""
    found = {passage_hash(chunk.passage): chunk.vector async for chunk in store.chunks(tenant, model)}
    vectors = [vector for p in sources if (vector := found.get(passage_hash(p))) is not None]
    if len(vectors) < len(sources):
        raise BenchError(f"the service stored no vector for {len(sources) - len(vectors)} of the kb's passages")
    return np.stack(vectors).astype(np.float32)


# --- load --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    tenant: str
    latency_s: float  # from the scheduled time to the reply
    late_s: float  # how late the generator sent it
    ok: bool


async def drive(client: KnowledgeClient, searches: Sequence[Search]) -> list[Answer]:
    """Each search sent at its time whatever happened before (open loop), timed from that time."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2
    answers: list[Answer] = []

    async def one(search: Search) -> None:
        due = start + search.at
        await asyncio.sleep(max(0.0, due - loop.time()))
        sent = loop.time()
        try:
            await client.search(search.tenant, SearchRequest(text=search.text))
            ok = True
        except KnowledgeError:
            ok = False
        answers.append(Answer(search.tenant, loop.time() - due, sent - due, ok))

    await asyncio.gather(*(one(search) for search in searches))
    return answers


async def load_run(
    label: str,
    service: EmbeddingProcess,
    client: KnowledgeClient,
    searches: Sequence[Search],
    rate: float,
    duration: float,
    questions: str,
) -> LoadRun:
    print(f"[knowledge] {label}: {len(searches)} searches at {rate:g}/s ({questions} questions) ...", flush=True)
    before, sum_before, count_before = await service.search_histogram(BIG)
    cpu_before, started = service.cpu_s(), time.perf_counter()
    answers = await drive(client, searches)
    cpu = 100 * (service.cpu_s() - cpu_before) / (time.perf_counter() - started)
    after, sum_after, count_after = await service.search_histogram(BIG)
    served = knowledge.bucket_delta(before, after)
    count = count_after - count_before
    big = [a.latency_s for a in answers if a.ok and a.tenant == BIG]
    other = [a.latency_s for a in answers if a.ok and a.tenant != BIG]
    run = LoadRun(
        label=label,
        backend=service.backend,
        questions=questions,
        rate_per_s=rate,
        duration_s=duration,
        searches=len(answers),
        errors=sum(not a.ok for a in answers),
        late_ms_p99=Percentiles.of(a.late_s for a in answers).p99_ms or 0.0,
        big_tenant=Percentiles.of(big),
        other_tenants=Percentiles.of(other),
        service_p50_ms_bucket=_bucket_ms(served, 50),
        service_p99_ms_bucket=_bucket_ms(served, 99),
        service_mean_ms=round(1000 * (sum_after - sum_before) / count, 2) if count else None,
        cpu_pct_of_one_core=round(cpu, 1),
    )
    print(
        f"      big tenant p50 {run.big_tenant.p50_ms} ms, p99 {run.big_tenant.p99_ms} ms; errors {run.errors}",
        flush=True,
    )
    return run


def _bucket_ms(buckets: dict[float, float], p: float) -> float | None:
    bound = knowledge.bucket_percentile(buckets, p)
    return None if bound is None else round(bound * 1000, 1)


async def warm_up(client: KnowledgeClient, tenant: str, texts: Sequence[str]) -> None:
    """Searches before timing: the model's pages, numpy's code and the query cache are warm."""
    for text in texts:
        await client.search(tenant, SearchRequest(text=text))


# --- the breakdown, in process ---------------------------------------------------------------------


@contextlib.contextmanager
def clock(samples: list[float]) -> Iterator[None]:
    """Append the time the block took (s) to `samples`."""
    started = time.perf_counter()
    yield
    samples.append(time.perf_counter() - started)


async def breakdown(database_url: str, texts: Sequence[str]) -> Breakdown:
    """One search of the big tenant timed part by part in this process, on the same store."""
    from zapflow.knowledge.encoders import LocalEncoder
    from zapflow.knowledge.service import Knowledge
    from zapflow.knowledge.text import Analyzer

    async def announce(*_: Any) -> None:
        return None

    configure_logging("bench", "WARNING")  # the service's start-up lines would interleave with the report
    engine = create_engine(database_url)
    encoder = LocalEncoder(EmbeddingSettings.model_fields["local_threads"].default)
    settings = EmbeddingSettings.model_construct(tenants=[BIG])
    service = Knowledge(settings, KnowledgeStore(engine), encoder, announce)
    try:
        await service.load()
        collection = service.index_of(BIG).knowledge
        analyzer, detector = Analyzer(), LanguageDetector()
        weight = settings.dense_weight
        parts: dict[str, list[float]] = {
            name: [] for name in ("detect", "terms", "embed", "hybrid", "lexical", "cached", "new")
        }
        for text in texts[:WARM_UP_SEARCHES]:
            await service.search(BIG, SearchRequest(text=f"{text} (warm-up)"))
        for text in texts:
            with clock(parts["detect"]):
                detector.detect(text, ("en", "es", "pt"))
            with clock(parts["terms"]):
                terms = analyzer.query_terms(text, collection.languages)
            with clock(parts["embed"]):
                vector = await encoder.query(text)
            with clock(parts["hybrid"]):
                collection.search(terms, vector, None, 5, weight)
            with clock(parts["lexical"]):
                collection.search(terms, None, None, 5, weight)
            again = SearchRequest(text=f"{text} (again)")
            with clock(parts["new"]):
                await service.search(BIG, again)
            with clock(parts["cached"]):
                await service.search(BIG, again)
        return Breakdown(
            chunks=len(collection),
            detect_language=Percentiles.of(parts["detect"]),
            query_terms=Percentiles.of(parts["terms"]),
            question_embedding=Percentiles.of(parts["embed"]),
            collection_search_hybrid=Percentiles.of(parts["hybrid"]),
            collection_search_lexical=Percentiles.of(parts["lexical"]),
            search_cached=Percentiles.of(parts["cached"]),
            search_uncached=Percentiles.of(parts["new"]),
        )
    finally:
        await encoder.aclose()
        await engine.dispose()


# --- the phase ---------------------------------------------------------------------------------------


class Starts:
    """The service's starts on the stack's store, each warmed up, with its load time and RSS."""

    def __init__(self, stack: Stack, client: KnowledgeClient) -> None:
        self._stack = stack
        self._client = client
        self.loaded: list[Loaded] = []
        # (chunks, bytes) of the local starts, for the slopes: RSS, and anonymous memory alone.
        self.rss_points: list[tuple[int, int]] = []
        self.anon_points: list[tuple[int, int]] = []

    async def start(
        self, name: str, backend: Backend, chunks: int, warm: Mapping[str, Sequence[str]]
    ) -> EmbeddingProcess:
        """A new process; after WARM_UP_SEARCHES searches of each tenant in `warm`, its RSS is read."""
        service = start_embedding(self._stack, name, backend)
        for tenant, texts in warm.items():
            await warm_up(self._client, tenant, texts[:WARM_UP_SEARCHES])
        rss, anonymous = service.rss(), service.anonymous()
        description = f"{chunks:,} chunks" + (", lexical only" if backend == "none" else "")
        if not warm:
            description = "empty store, the model not run yet"
        self.loaded.append(
            Loaded(description, backend, chunks, service.ready_s, service.load_s(), _mib(rss), _mib(anonymous))
        )
        if backend == "local" and warm:
            self.rss_points.append((chunks, rss))
            self.anon_points.append((chunks, anonymous))
        return service


async def measure(options: KnowledgeOptions, stack: Stack) -> KnowledgeResult:
    started = time.perf_counter()
    meta = machine.describe()
    load_before = os.getloadavg()
    stack.start_infra()
    migrate(stack)
    database_url = sqlite_url(stack.workdir)
    engine = create_engine(database_url)
    store = KnowledgeStore(engine)
    nc: NATS = await nats.connect(stack.nats_url, name="bench-knowledge")
    client = KnowledgeClient(nc, search_timeout_s=30)
    starts = Starts(stack, client)
    runs: list[LoadRun] = []
    ingests: list[Ingest] = []
    questions = evaluate.load_questions()
    texts = [q.text for q in questions]
    portuguese = [q.text for q in questions if q.language == "pt"]
    try:
        # 1. The shop, ingested for real: chunks/s, and e5's vectors of the kb's passages.
        kb = kb_passages()
        sources = [passage for _, passages in kb for passage in passages]
        corpus = SyntheticCorpus(sources)
        extra = max(0, options.ingest_chunks - len(sources))
        shop_documents = [*kb, *documents_of("synthetic", corpus.passages(extra, corpus.languages, options.seed)[0])]
        shop_chunks = len(sources) + extra
        tenants = [Tenant(SHOP, shop_chunks, list(corpus.languages)), Tenant(BIG, options.big_chunks, ["pt"])]
        service = await starts.start("empty", "local", 0, {})
        print(f"[knowledge] ingesting {shop_chunks} chunks into {SHOP} (real embedding) ...", flush=True)
        ingests.append(await ingest(client, SHOP, shop_documents, "local"))
        model = (await client.list_documents(SHOP)).model
        assert model is not None, "the local backend names its model"
        service.stop()
        vectors = await source_vectors(store, SHOP, model, sources)
        # A fresh process: after an ingest, the model's working memory would count as the index's.
        (await starts.start("shop", "local", shop_chunks, {SHOP: texts})).stop()

        # 2. and 3. The big tenant (10,000 chunks first), then the rest and the smaller tenants.
        big_passages, origins = corpus.passages(options.big_chunks, ("pt",), options.seed + 1)
        big_vectors = knowledge.perturbed(vectors[origins], np.random.default_rng(options.seed + 1))
        big_documents = documents_of("catalogue", big_passages)
        first_documents = min(options.big_chunks, 10_000) // DOCUMENT_CHUNKS
        first = sum(len(passages) for _, passages in big_documents[:first_documents])
        print(f"[knowledge] writing {first:,} synthetic chunks of {BIG} to SQL ...", flush=True)
        await write_tenant(store, BIG, big_documents[:first_documents], big_vectors[:first], model)
        if first < options.big_chunks:
            (await starts.start("10k", "local", shop_chunks + first, {SHOP: texts, BIG: portuguese})).stop()
        print(f"[knowledge] writing {options.big_chunks - first:,} more and the smaller tenants ...", flush=True)
        await write_tenant(store, BIG, big_documents[first_documents:], big_vectors[first:], model)
        for number, size in enumerate(options.small_chunks, start=1):
            name = f"small-{number}"
            passages, origins = corpus.passages(size, corpus.languages, options.seed + 1 + number)
            small_vectors = knowledge.perturbed(vectors[origins], np.random.default_rng(options.seed + 1 + number))
            await write_tenant(store, name, documents_of(name, passages), small_vectors, model)
            tenants.append(Tenant(name, size, list(corpus.languages)))
        total = sum(t.chunks for t in tenants)
        others = [t.name for t in tenants if t.name != BIG]
        shares = {BIG: BIG_SHARE, **dict.fromkeys(others, (1 - BIG_SHARE) / len(others))}
        asked = {t.name: portuguese if t.name == BIG else texts for t in tenants}

        service = await starts.start("all", "local", total, asked)
        count = int(options.rate * options.duration)
        distinct = {
            name: knowledge.distinct_questions(asked[name], count, options.seed + n, first_number=100_000 + n * count)
            for n, name in enumerate(asked)
        }
        plan = knowledge.schedule(options.rate, options.duration, shares, distinct, options.seed)
        runs.append(await load_run("new questions", service, client, plan, options.rate, options.duration, "distinct"))
        repeated = {name: texts_asked[:REPEATED_QUESTIONS] for name, texts_asked in distinct.items()}
        for name, texts_asked in repeated.items():
            await warm_up(client, name, texts_asked)  # every repeated question is in the cache
        plan = knowledge.schedule(options.rate, options.repeated_duration, shares, repeated, options.seed)
        runs.append(
            await load_run(
                "repeated questions", service, client, plan, options.rate, options.repeated_duration, "repeated"
            )
        )
        service.stop()

        # 4. Lexical only: the same store, no model.
        service = await starts.start("lexical", "none", total, asked)
        plan = knowledge.schedule(options.rate, options.duration, shares, distinct, options.seed + 7)
        runs.append(await load_run("lexical only", service, client, plan, options.rate, options.duration, "distinct"))
        lexical, _ = corpus.passages(options.lexical_ingest_chunks, corpus.languages, options.seed + 99, 900_000)
        print(f"[knowledge] ingesting {len(lexical):,} chunks without a model ...", flush=True)
        ingests.append(await ingest(client, "lexical-ingest", documents_of("lexical", lexical), "none"))
        service.stop()
    finally:
        await nc.close()
        await engine.dispose()

    # 5. Where the time of one search goes.
    print("[knowledge] timing the parts of one search in process ...", flush=True)
    parts = await breakdown(database_url, knowledge.distinct_questions(portuguese, 200, options.seed + 5))
    return KnowledgeResult(
        meta={
            "date": meta.date,
            "commit": meta.commit,
            "cpu": meta.cpu,
            "cores": str(meta.cores),
            "command": meta.command,
            # The box may be shared: the 1-minute load average before the run and after it.
            "load_average": f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after",
        },
        config={**dataclasses.asdict(options), "json": str(options.json), "model": model},
        tenants=tenants,
        starts=starts.loaded,
        rss_mib_per_10k_chunks=knowledge.mib_per_10k(starts.rss_points),
        anon_mib_per_10k_chunks=knowledge.mib_per_10k(starts.anon_points),
        vector_mib_per_10k_chunks=round(10_000 * vectors.shape[1] * vectors.itemsize / 2**20, 1),
        runs=runs,
        breakdown=parts,
        ingests=ingests,
        wall_s=round(time.perf_counter() - started, 1),
    )


def _mib(rss: int) -> float:
    return round(rss / 2**20, 1)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the phase on a stack of its own; 0 when it completed, 2 when it could not."""
    options = parse_options(argv)
    workdir = Path(tempfile.mkdtemp(prefix="zapflow-bench-knowledge-"))
    stack = Stack(workdir, Ports.choose(None, 1))
    try:
        result = asyncio.run(measure(options, stack))
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process ...", file=sys.stderr)
        return 130
    except BenchError as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 2
    finally:
        stack.stop()
        if options.keep:
            print(f"work dir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    options.json.parent.mkdir(parents=True, exist_ok=True)
    options.json.write_text(json.dumps(to_json(result), indent=2, ensure_ascii=False) + "\n")
    print(knowledge.render(result))
    print(f"JSON report: {options.json}")
    return 0
