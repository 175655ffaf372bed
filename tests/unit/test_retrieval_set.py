"""The retrieval evaluation set is complete and consistent, and its scorer counts what it says."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from bench.retrieval import evaluate
from bench.retrieval.evaluate import Chunk, Question

CHUNKS = evaluate.load_kb()
QUESTIONS = evaluate.load_questions()
ANSWERABLE = [question for question in QUESTIONS if not question.unanswerable]
NUMBER = re.compile(r"\d+")


def in_language(language: str) -> list[Chunk]:
    return [chunk for chunk in CHUNKS if chunk.language == language]


def numbers(chunk: Chunk) -> set[int]:
    """The figures a chunk states, whatever the decimal separator or clock format ('18h', '18:00')."""
    return {int(digits) for digits in NUMBER.findall(chunk.text)} - {0}


def test_every_expected_passage_exists_in_the_question_language() -> None:
    ids = {chunk.id: chunk for chunk in CHUNKS}
    unknown = [(q.id, expected) for q in ANSWERABLE for expected in q.expects if expected not in ids]
    assert unknown == []
    foreign = [(q.id, expected) for q in ANSWERABLE for expected in q.expects if ids[expected].language != q.language]
    assert foreign == []


def test_chunk_and_question_ids_are_unique() -> None:
    assert [i for i, n in Counter(chunk.id for chunk in CHUNKS).items() if n > 1] == []
    assert [i for i, n in Counter(question.id for question in QUESTIONS).items() if n > 1] == []


def test_the_set_is_large_enough_with_a_few_unanswerable_questions() -> None:
    assert len(ANSWERABLE) >= 150
    assert 8 <= len(QUESTIONS) - len(ANSWERABLE) <= 15
    per_language = Counter(question.language for question in QUESTIONS)
    assert all(per_language[language] >= 60 for language in evaluate.LANGUAGES), per_language
    assert all(40 <= len(in_language(language)) <= 70 for language in evaluate.LANGUAGES)


def test_every_kind_is_asked_in_every_language() -> None:
    asked = Counter((question.language, question.kind) for question in ANSWERABLE)
    thin = {
        (language, kind): asked[language, kind]
        for language in evaluate.LANGUAGES
        for kind in evaluate.KINDS
        if asked[language, kind] < 5
    }
    assert thin == {}


def test_the_three_languages_have_the_same_files_headings_and_faq_entries() -> None:
    def outline(language: str) -> list[tuple[str, int]]:
        return [(chunk.document, len(chunk.heading_path)) for chunk in in_language(language)]

    assert outline("es") == outline("pt")
    assert outline("en") == outline("pt")


def test_the_translations_state_the_same_figures() -> None:
    differing = [
        (pt.id, other.id, numbers(pt) ^ numbers(other))
        for language in ("es", "en")
        for pt, other in zip(in_language("pt"), in_language(language), strict=True)
        if numbers(pt) != numbers(other)
    ]
    assert differing == []


def test_the_markdown_chunker_keeps_the_heading_path_and_skips_empty_titles(tmp_path: Path) -> None:
    page = tmp_path / "policies.md"
    page.write_text("# Shop\n\n## Delivery\nWe ship in 2 days.\n\n### Express\nSame day.\n\n## Returns\n7 days.\n")
    chunks = evaluate.markdown_chunks("en", page)
    assert [(chunk.id, chunk.heading_path, chunk.body) for chunk in chunks] == [
        ("en/policies.md#Delivery", ("Shop", "Delivery"), "We ship in 2 days."),
        ("en/policies.md#Express", ("Shop", "Delivery", "Express"), "Same day."),
        ("en/policies.md#Returns", ("Shop", "Returns"), "7 days."),
    ]
    assert chunks[1].text == "Shop > Delivery > Express\nSame day."


def test_the_csv_chunker_makes_one_chunk_per_row_and_rejects_another_header(tmp_path: Path) -> None:
    faq = tmp_path / "faq.csv"
    faq.write_text('question,answer\nOpen on Sunday?,"No, closed."\n')
    [chunk] = evaluate.csv_chunks("en", faq)
    assert (chunk.id, chunk.text) == ("en/faq.csv#Open on Sunday?", "Open on Sunday?\nNo, closed.")
    faq.write_text("q,a\nOpen on Sunday?,No\n")
    with pytest.raises(ValueError, match="question,answer"):
        evaluate.csv_chunks("en", faq)


def test_a_question_with_an_unknown_kind_or_without_an_answer_is_refused(tmp_path: Path) -> None:
    questions = tmp_path / "questions.yaml"
    questions.write_text("- {id: x-1, language: pt, kind: slang, text: oi, expects: [pt/a.md#A]}\n")
    with pytest.raises(ValueError, match="x-1"):
        evaluate.load_questions(questions)
    questions.write_text("- {id: x-2, language: pt, kind: exact, text: oi}\n")
    with pytest.raises(ValueError, match="x-2"):
        evaluate.load_questions(questions)


def test_recall_counts_the_rank_of_the_first_expected_passage() -> None:
    asked = [Question(f"q{i}", "en", "exact", f"question {i}", (f"en/a.md#{i}",), False) for i in range(4)]

    def answer_at_rank(rank: int) -> evaluate.Retriever:
        def retrieve(language_hint: str | None, text: str) -> list[str]:
            wanted = next(q.expects[0] for q in asked if q.text == text)
            return [*(f"en/a.md#other{n}" for n in range(rank - 1)), wanted, "en/a.md#last"]

        return retrieve

    for rank, expected in [(1, (1.0, 1.0)), (3, (0.0, 1.0)), (6, (0.0, 0.0))]:
        outcomes = evaluate.evaluate(answer_at_rank(rank), asked)
        assert (evaluate.recall(outcomes, 1), evaluate.recall(outcomes, 5)) == expected, rank


def test_the_baseline_runs_end_to_end_with_and_without_the_language_hint() -> None:
    retriever = evaluate.TokenOverlap(CHUNKS)
    for hint in (True, False):
        outcomes = evaluate.evaluate(retriever, QUESTIONS, language_hint=hint)
        assert len(outcomes) == len(ANSWERABLE)
        assert 0 < evaluate.recall(outcomes, 1) <= evaluate.recall(outcomes, 5) < 1
    table = evaluate.report("baseline", outcomes)
    assert "| language pt |" in table
    assert "| kind mixed_language |" in table
