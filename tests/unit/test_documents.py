"""Reading knowledge-base sources: how each kind is cut into passages, and every way a file is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from fpdf import FPDF

from zapflow.knowledge.documents import (
    MAX_PASSAGE_CHARS,
    TITLE_SEPARATOR,
    UnreadableDocument,
    expand,
    read_document,
)
from zapflow.knowledge.text import LanguageDetector

KB = Path(__file__).resolve().parents[2] / "bench" / "retrieval" / "kb"


@pytest.fixture(scope="module")
def detector() -> LanguageDetector:
    return LanguageDetector()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def pdf_bytes(*pages: str, password: str | None = None) -> bytes:
    """A real PDF with one page per text ("" draws a rectangle: a page with no text on it)."""
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 8, text)
        else:
            pdf.rect(20, 20, 100, 60, style="F")
    if password is not None:
        pdf.set_encryption(owner_password=password, user_password=password)
    return bytes(pdf.output())


def refusal(path: Path, detector: LanguageDetector, name: str | None = None) -> str:
    with pytest.raises(UnreadableDocument) as refused:
        read_document(path, name or path.name, None, detector)
    message = str(refused.value)
    assert message.startswith(f"{path}: "), message
    return message


# --- Markdown ---


def test_markdown_sections_sit_under_their_heading_paths(tmp_path: Path, detector: LanguageDetector) -> None:
    path = write(
        tmp_path / "policies.md",
        "Casa Ventura: what you should know.\n\n"
        "# Delivery\n"
        "We deliver everywhere.\n"
        "## Prices\n"
        "Free above R$ 299.\n"
        "### Express\n"
        "Same day in São Paulo.\n"
        "## Pickup ##\n"
        "Free in every store.\n"
        "# Returns\n"
        "## Empty section\n"
        "# C#\n"
        "```python\n"
        "# not a heading: a comment in code\n"
        "```\n",
    )

    document = read_document(path, "policies.md", "en", detector)

    assert [(p.title, p.body) for p in document.passages] == [
        ("policies", "Casa Ventura: what you should know."),
        ("Delivery", "We deliver everywhere."),
        (TITLE_SEPARATOR.join(["Delivery", "Prices"]), "Free above R$ 299."),
        (TITLE_SEPARATOR.join(["Delivery", "Prices", "Express"]), "Same day in São Paulo."),
        (TITLE_SEPARATOR.join(["Delivery", "Pickup"]), "Free in every store."),
        ("C#", "```python\n# not a heading: a comment in code\n```"),
    ]
    assert document.kind == "markdown"
    assert document.name == "policies.md"


def test_a_heading_closes_deeper_sections_even_when_levels_were_skipped(
    tmp_path: Path, detector: LanguageDetector
) -> None:
    path = write(tmp_path / "skips.md", "### Deep\nfirst\n## Higher\nsecond\n# Top\nthird\n")

    titles = [p.title for p in read_document(path, "skips.md", "en", detector).passages]

    assert titles == ["Deep", "Higher", "Top"]


def test_a_long_section_is_cut_at_paragraphs_each_piece_keeping_its_headings(
    tmp_path: Path, detector: LanguageDetector
) -> None:
    paragraphs = [f"Paragraph {n}. " + "word " * 120 for n in range(8)]
    path = write(tmp_path / "long.md", "# Guide\n## Sizes\n" + "\n\n".join(paragraphs) + "\n")

    passages = read_document(path, "long.md", "en", detector).passages

    assert len(passages) > 1
    assert {p.title for p in passages} == {f"Guide{TITLE_SEPARATOR}Sizes"}
    assert all(len(p.body) <= MAX_PASSAGE_CHARS for p in passages)
    # Cut between paragraphs, never inside one, and nothing lost or repeated.
    pieces = [piece for p in passages for piece in p.body.split("\n\n")]
    assert pieces == [paragraph.strip() for paragraph in paragraphs]


def test_one_paragraph_longer_than_a_passage_is_cut_at_sentences(tmp_path: Path, detector: LanguageDetector) -> None:
    sentences = [f"Sentence number {n} says something about delivery times." for n in range(80)]
    path = write(tmp_path / "wall.txt", " ".join(sentences))

    passages = read_document(path, "wall.txt", "en", detector).passages

    assert len(passages) > 1
    assert all(len(p.body) <= MAX_PASSAGE_CHARS and p.body.endswith(".") for p in passages)
    assert " ".join(p.body for p in passages) == " ".join(sentences)


# --- plain text ---


def test_plain_text_is_cut_at_paragraphs_under_the_file_name(tmp_path: Path, detector: LanguageDetector) -> None:
    path = write(tmp_path / "hours.txt", "Open from 9 to 18.\r\n\r\nClosed on Sundays.\r\n")

    document = read_document(path, "notes/hours.txt", "en", detector)

    assert document.kind == "text"
    assert [(p.title, p.body) for p in document.passages] == [("hours", "Open from 9 to 18.\n\nClosed on Sundays.")]


def test_text_that_is_not_utf8_is_refused(tmp_path: Path, detector: LanguageDetector) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("Preço: R$ 10".encode("latin-1"))

    assert "not UTF-8 text (byte 3)" in refusal(path, detector)


def test_binary_and_empty_files_are_refused(tmp_path: Path, detector: LanguageDetector) -> None:
    binary = tmp_path / "image.txt"
    binary.write_bytes(b"GIF89a\x00\x01\x00")
    assert "NUL bytes" in refusal(binary, detector)

    empty = write(tmp_path / "empty.md", "# Only a heading\n\n")
    assert "has no text to ingest" in refusal(empty, detector)


# --- CSV ---


def test_csv_rows_are_questions_with_their_answers(tmp_path: Path, detector: LanguageDetector) -> None:
    path = tmp_path / "faq.csv"
    path.write_bytes(
        "\ufeffQuestion,Answer\r\n"
        '"Do you deliver on Saturdays?","Yes, Monday to Saturday, by carrier."\r\n'
        "\r\n"
        'Where are you?,"Rua Augusta, 100, São Paulo"\r\n'.encode()
    )

    document = read_document(path, "faq.csv", "en", detector)

    assert document.kind == "csv"
    assert [(p.title, p.body, p.language) for p in document.passages] == [
        ("Do you deliver on Saturdays?", "Yes, Monday to Saturday, by carrier.", "en"),
        ("Where are you?", "Rua Augusta, 100, São Paulo", "en"),
    ]


def test_a_language_column_sets_each_rows_language(tmp_path: Path, detector: LanguageDetector) -> None:
    path = write(
        tmp_path / "faq.csv",
        "language,question,answer\n"
        "pt,Vocês entregam aos sábados?,Sim.\n"
        "ES,¿Entregan los sábados?,Sí.\n"
        ",Do you deliver on Saturdays?,Yes.\n",
    )

    languages = [p.language for p in read_document(path, "faq.csv", "en", detector).passages]

    assert languages == ["pt", "es", "en"]  # a row without one takes the document's


def test_csv_mistakes_are_named(tmp_path: Path, detector: LanguageDetector) -> None:
    no_header = write(tmp_path / "no-header.csv", "Do you deliver?,Yes.\n")
    assert "needs the header question,answer" in refusal(no_header, detector)

    no_answer = write(tmp_path / "no-answer.csv", "question,answer\nDo you deliver?,Yes.\nWhere are you?,\n")
    assert "row 3 has no answer" in refusal(no_answer, detector)

    short_row = write(tmp_path / "short-row.csv", "question,answer\nWhere are you?\n")
    assert "row 2 has no answer" in refusal(short_row, detector)

    bad_language = write(tmp_path / "bad-language.csv", "question,answer,language\nA?,B.,Portuguese\n")
    assert "row 2: language 'portuguese' is not an ISO 639-1 code" in refusal(bad_language, detector)

    huge = write(tmp_path / "huge.csv", f"question,answer\nA?,{'x' * 50_001}\n")
    assert "row 2: the answer has 50,001 characters, at most 50,000" in refusal(huge, detector)


# --- PDF ---


def test_pdf_pages_become_passages_with_their_page_numbers(tmp_path: Path, detector: LanguageDetector) -> None:
    path = tmp_path / "catalogue.pdf"
    path.write_bytes(pdf_bytes("The Lumen lamp costs R$ 189.", "", "Warranty: 12 months on every lamp."))

    document = read_document(path, "catalogue.pdf", None, detector)

    assert document.kind == "pdf"
    assert [(p.title, p.body) for p in document.passages] == [
        ("catalogue (page 1)", "The Lumen lamp costs R$ 189."),
        ("catalogue (page 3)", "Warranty: 12 months on every lamp."),
    ]
    assert {p.language for p in document.passages} == {"en"}


def test_unreadable_pdfs_are_refused_with_the_reason(tmp_path: Path, detector: LanguageDetector) -> None:
    good = pdf_bytes("Some text on a page.")

    truncated = tmp_path / "truncated.pdf"
    truncated.write_bytes(good[: len(good) // 2])
    assert "not a readable PDF" in refusal(truncated, detector)

    garbage = tmp_path / "garbage.pdf"
    garbage.write_bytes(b"this was never a PDF\n" * 50)
    assert "not a readable PDF" in refusal(garbage, detector)

    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    assert "not a readable PDF" in refusal(empty, detector)

    encrypted = tmp_path / "encrypted.pdf"
    encrypted.write_bytes(pdf_bytes("A secret price list.", password="s3cret"))
    assert "is encrypted" in refusal(encrypted, detector)

    scanned = tmp_path / "scanned.pdf"
    scanned.write_bytes(pdf_bytes("", ""))
    assert "has no text layer (a scanned PDF needs OCR first)" in refusal(scanned, detector)


def test_a_damaged_pdf_is_refused_whatever_pypdf_raises(tmp_path: Path, detector: LanguageDetector) -> None:
    good = pdf_bytes("Hello world. " * 50, "Second page. " * 40)
    filter_name = good.index(b"/FlateDecode")
    damaged = tmp_path / "damaged.pdf"
    # A filter pypdf does not know: it raises NotImplementedError, not one of its own errors.
    damaged.write_bytes(good[:filter_name] + b"/FlateDecodX" + good[filter_name + len(b"/FlateDecode") :])

    assert "not a readable PDF (NotImplementedError)" in refusal(damaged, detector)


# --- files, names and languages ---


def test_unsupported_missing_and_misnamed_files(tmp_path: Path, detector: LanguageDetector) -> None:
    docx = write(tmp_path / "policies.docx", "not really")
    assert "not a Markdown, text, CSV or PDF file" in refusal(docx, detector)

    missing = tmp_path / "gone.md"
    assert "cannot be read" in refusal(missing, detector)

    fine = write(tmp_path / "fine.md", "text")
    assert "cannot name a document" in refusal(fine, detector, name="line\nbreak.md")


def test_language_explicit_wins_else_detected(detector: LanguageDetector) -> None:
    for language in ("pt", "es", "en"):
        for name in ("returns.md", "faq.csv"):
            document = read_document(KB / language / name, name, None, detector)
            assert {p.language for p in document.passages} == {language}, (language, name)

    forced = read_document(KB / "pt" / "returns.md", "returns.md", "es", detector)
    assert {p.language for p in forced.passages} == {"es"}


def test_the_content_hash_changes_exactly_when_the_bytes_do(tmp_path: Path, detector: LanguageDetector) -> None:
    path = write(tmp_path / "a.md", "# A\nsame text\n")
    first = read_document(path, "a.md", "en", detector).content_hash

    assert read_document(path, "renamed.md", "pt", detector).content_hash == first
    write(tmp_path / "copy" / "a.md", "# A\nsame text\n")
    assert read_document(tmp_path / "copy" / "a.md", "a.md", "en", detector).content_hash == first

    write(path, "# A\nsame text \n")  # a trailing space: the same passages, other bytes
    assert read_document(path, "a.md", "en", detector).content_hash != first


# --- expand ---


def test_expand_names_a_folders_files_by_their_path_inside_it(tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    for name in ("b.md", "a.txt", "sub/c.csv", "sub/deeper/d.PDF", "notes.docx", "image.png", ".hidden.md"):
        write(kb / name, "x")
    single = write(tmp_path / "single.md", "x")

    found = expand([kb, single])

    assert [(name, path) for path, name in found] == [
        ("a.txt", kb / "a.txt"),
        ("b.md", kb / "b.md"),
        ("sub/c.csv", kb / "sub" / "c.csv"),
        ("sub/deeper/d.PDF", kb / "sub" / "deeper" / "d.PDF"),
        ("single.md", single),
    ]


def test_expand_reads_a_mounted_configmap_once(tmp_path: Path) -> None:
    # Kubernetes mounts a ConfigMap as links to a hidden, timestamped folder.
    mount = tmp_path / "faq"
    write(mount / "..2024_05_01_10_00_00.123" / "faq.md", "x")
    (mount / "..data").symlink_to("..2024_05_01_10_00_00.123")
    (mount / "faq.md").symlink_to("..data/faq.md")

    assert [name for _, name in expand([mount])] == ["faq.md"]


def test_expand_refuses_what_it_cannot_ingest(tmp_path: Path) -> None:
    with pytest.raises(UnreadableDocument, match=r"gone: no such file or folder"):
        expand([tmp_path / "gone"])

    docx = write(tmp_path / "policies.docx", "x")
    with pytest.raises(UnreadableDocument, match=r"policies\.docx: not a Markdown, text, CSV or PDF file"):
        expand([docx])

    write(tmp_path / "images" / "logo.png", "x")
    with pytest.raises(UnreadableDocument, match=r"images: no Markdown, text, CSV or PDF file in this folder"):
        expand([tmp_path / "images"])

    write(tmp_path / "one" / "faq.md", "x")
    write(tmp_path / "two" / "faq.md", "y")
    with pytest.raises(UnreadableDocument, match=r"has the same document name as .*one/faq\.md \('faq\.md'\)"):
        expand([tmp_path / "one", tmp_path / "two"])
