"""Retrieval evaluation set for issue #10: recall@1 and recall@5 of a retriever over a shop's knowledge base.

    uv run python bench/retrieval/evaluate.py                      # the token-overlap baseline
    uv run python bench/retrieval/evaluate.py --no-language-hint   # retriever searches all languages

Loads bench/retrieval/kb/ (one shop, in pt, es and en) into chunks and bench/retrieval/questions.yaml,
asks a retriever for a ranked list of chunk ids per question and prints a markdown table of recall
overall, per language and per kind, then the misses. Any callable `(language_hint, text) -> chunk ids`
can be measured with `evaluate`; `TokenOverlap` is the trivial baseline that makes the harness run.

The chunker here exists for this benchmark only: the product's chunker (`zapflow kb ingest`) comes
later and may cut differently; it is measured by mapping its chunks back to these ids.
"""

from __future__ import annotations

import argparse
import csv
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
KB_DIR = HERE / "kb"
QUESTIONS_FILE = HERE / "questions.yaml"
LANGUAGES = ("pt", "es", "en")
KINDS = ("exact", "paraphrase", "typo", "no_accents", "mixed_language", "colloquial")
CUTOFFS = (1, 5)
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
WORD = re.compile(r"\w+")

# Given the question's language (None when the caller will not say) and its text, chunk ids best first.
Retriever = Callable[[str | None, str], Sequence[str]]


@dataclass(frozen=True)
class Chunk:
    """One retrievable passage: a Markdown section under its heading path, or one FAQ row."""

    language: str
    document: str  # file name inside kb/<language>/, the same in every language
    heading_path: tuple[str, ...]  # Markdown headings from the top, or the FAQ question alone
    body: str

    @property
    def id(self) -> str:
        """`<language>/<document>#<own heading or FAQ question>`: stable while that text is unchanged."""
        return f"{self.language}/{self.document}#{self.heading_path[-1]}"

    @property
    def text(self) -> str:
        """What a retriever indexes: the heading path, then the body."""
        return " > ".join(self.heading_path) + "\n" + self.body


@dataclass(frozen=True)
class Question:
    """A customer's message and the passages that answer it (none when the knowledge base cannot)."""

    id: str
    language: str
    kind: str
    text: str
    expects: tuple[str, ...]
    unanswerable: bool


@dataclass(frozen=True)
class Outcome:
    """What a retriever ranked for one answerable question, cut at the largest cutoff."""

    question: Question
    ranked: tuple[str, ...]

    @property
    def rank(self) -> int | None:
        """1-based position of the first expected passage, None when it is not in the ranked list."""
        return next((i for i, chunk_id in enumerate(self.ranked, 1) if chunk_id in self.question.expects), None)

    def hit(self, k: int) -> bool:
        return self.rank is not None and self.rank <= k


def markdown_chunks(language: str, path: Path) -> list[Chunk]:
    """One chunk per heading with text under it, keeping the path of headings above it."""
    chunks: list[Chunk] = []
    heading_path: list[str] = []
    body: list[str] = []

    def close_section() -> None:
        text = "\n".join(body).strip()
        if heading_path and text:  # a title directly followed by a subheading has nothing to retrieve
            chunks.append(Chunk(language, path.name, tuple(heading_path), text))
        body.clear()

    for line in path.read_text(encoding="utf-8").splitlines():
        match = HEADING.match(line)
        if match is None:
            body.append(line)
            continue
        close_section()
        level = len(match.group(1))
        del heading_path[level - 1 :]
        heading_path.append(match.group(2))
    close_section()
    return chunks


def csv_chunks(language: str, path: Path) -> list[Chunk]:
    """One chunk per question,answer row of an FAQ export."""
    with path.open(encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows or set(rows[0]) != {"question", "answer"}:
        raise ValueError(f"{path}: expected a CSV with the header question,answer")
    return [Chunk(language, path.name, (row["question"].strip(),), row["answer"].strip()) for row in rows]


def load_kb(kb_dir: Path = KB_DIR) -> list[Chunk]:
    """Every chunk of every language, in file order."""
    readers = {".md": markdown_chunks, ".csv": csv_chunks}
    chunks: list[Chunk] = []
    for language in LANGUAGES:
        for path in sorted((kb_dir / language).iterdir()):
            if path.suffix not in readers:
                raise ValueError(f"{path}: only Markdown and CSV files belong in the knowledge base")
            chunks.extend(readers[path.suffix](language, path))
    return chunks


def load_questions(path: Path = QUESTIONS_FILE) -> list[Question]:
    """The questions, checked field by field so that a typo in the set fails loudly."""
    questions: list[Question] = []
    for entry in yaml.safe_load(path.read_text(encoding="utf-8")):
        where = f"{path.name}: question {entry.get('id')!r}"
        if entry.get("language") not in LANGUAGES or entry.get("kind") not in KINDS:
            raise ValueError(f"{where}: language must be one of {LANGUAGES} and kind one of {KINDS}")
        unanswerable = bool(entry.get("unanswerable", False))
        expects = tuple(entry.get("expects", ()))
        if unanswerable == bool(expects):
            raise ValueError(f"{where}: give either expects or unanswerable: true")
        questions.append(Question(entry["id"], entry["language"], entry["kind"], entry["text"], expects, unanswerable))
    return questions


def words(text: str) -> list[str]:
    """Lower-case words with accents removed, so that 'Pix', 'pix' and 'entrega'/'entregá' meet."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return WORD.findall("".join(c for c in decomposed if not unicodedata.combining(c)))


class TokenOverlap:
    """The trivial baseline: rank chunks by how many distinct words they share with the question."""

    def __init__(self, chunks: Iterable[Chunk]) -> None:
        self._index = [(chunk, frozenset(words(chunk.text))) for chunk in chunks]

    def __call__(self, language_hint: str | None, text: str) -> list[str]:
        asked = frozenset(words(text))
        scored = [
            (len(asked & chunk_words), position, chunk.id)
            for position, (chunk, chunk_words) in enumerate(self._index)
            if language_hint is None or chunk.language == language_hint
        ]
        # Ties keep knowledge-base order so that a run is reproducible.
        scored.sort(key=lambda item: (-item[0], item[1]))
        return [chunk_id for _, _, chunk_id in scored]


def evaluate(retriever: Retriever, questions: Iterable[Question], *, language_hint: bool = True) -> list[Outcome]:
    """Ask the retriever every answerable question; unanswerable ones test a threshold, not a ranking."""
    return [
        Outcome(question, tuple(retriever(question.language if language_hint else None, question.text))[: max(CUTOFFS)])
        for question in questions
        if not question.unanswerable
    ]


def recall(outcomes: Sequence[Outcome], k: int) -> float:
    """Share of questions with an expected passage in the first k."""
    return sum(outcome.hit(k) for outcome in outcomes) / len(outcomes) if outcomes else 0.0


def report(title: str, outcomes: Sequence[Outcome]) -> str:
    """A markdown table of recall overall, per language and per kind, then the misses at 1."""
    groups: list[tuple[str, list[Outcome]]] = [("all", list(outcomes))]
    groups += [
        (f"language {language}", [o for o in outcomes if o.question.language == language]) for language in LANGUAGES
    ]
    groups += [(f"kind {kind}", [o for o in outcomes if o.question.kind == kind]) for kind in KINDS]
    lines = [f"## {title}", "", "| questions | n | " + " | ".join(f"recall@{k}" for k in CUTOFFS) + " |"]
    lines.append("|---|---:|" + "---:|" * len(CUTOFFS))
    for name, group in groups:
        lines.append(f"| {name} | {len(group)} | " + " | ".join(f"{recall(group, k):.3f}" for k in CUTOFFS) + " |")
    misses = [outcome for outcome in outcomes if not outcome.hit(1)]
    lines += ["", f"### Misses at 1 ({len(misses)})", ""]
    for outcome in misses:
        question = outcome.question
        found = f"rank {outcome.rank}" if outcome.rank else f"not in top {max(CUTOFFS)}"
        top = outcome.ranked[0] if outcome.ranked else "nothing"
        lines.append(f"- {question.id} ({question.kind}, {found}): {question.text!r} got `{top}`")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--no-language-hint", action="store_true", help="do not tell the retriever the question's language"
    )
    options = parser.parse_args()
    chunks = load_kb()
    questions = load_questions()
    outcomes = evaluate(TokenOverlap(chunks), questions, language_hint=not options.no_language_hint)
    hint = "without" if options.no_language_hint else "with"
    print(f"{len(chunks)} chunks, {len(questions)} questions ({len(outcomes)} answerable)\n")
    print(report(f"Baseline: token overlap, {hint} language hint", outcomes))


if __name__ == "__main__":
    main()
