"""Reading knowledge-base sources into passages: Markdown, plain text, CSV (question,answer) and PDF.

A source is read whole, or refused whole with `UnreadableDocument` naming it and saying why: an
ingest reads every source before it sends anything, so a corrupt file leaves the knowledge base
exactly as it was.

Chunking keeps what a customer's question is about together: a Markdown section stays under its
headings (a long one is cut at paragraphs, each piece keeping the headings), a CSV row is one
question with its answer, and plain text and PDF are cut at paragraphs.

A folder's hidden files and folders are skipped: a mounted ConfigMap holds each file twice, once
through the `..data` link and once in a hidden `..<timestamp>` folder.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from pypdf import PdfReader
from pypdf.errors import PyPdfError

from zapflow.knowledge.messages import (
    DOCUMENT_NAME_PATTERN,
    MAX_PASSAGES_PER_DOCUMENT,
    SPEC_PREFIX,
    CommitRequest,
    DocumentKind,
    Origin,
    Passage,
)
from zapflow.knowledge.text import LanguageDetector
from zapflow.tenants.model import FaqEntrySpec

KINDS: dict[str, DocumentKind] = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".csv": "csv",
    ".pdf": "pdf",
}
MAX_FILE_BYTES = 50 * 1024 * 1024
# A ConfigMap's keys are the documents `spec:configmap:<configmap>/<key>`: the spec sync reads them where
# they are mounted, the operator from the Kubernetes API.
CONFIGMAP_PREFIX = f"{SPEC_PREFIX}configmap:"
# A passage longer than this is cut at paragraphs: a model reads about 512 tokens of it at most.
MAX_PASSAGE_CHARS = 1_500
# A CSV answer is one passage, never cut: at most what a passage's body holds.
MAX_ANSWER_CHARS: int = Passage.model_fields["body"].metadata[-1].max_length
# An ATX heading; a closing run of # counts only after a space ("# C#" is about C#).
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
# A fenced code block opens and closes with ``` or ~~~: a "# comment" inside it is no heading.
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
TITLE_SEPARATOR = " > "

# pypdf logs a warning for each damage it works around: a PDF it cannot read is refused here with
# the reason, and one it can read needs no warning (in `zapflow kb ingest` they would precede the error).
logging.getLogger("pypdf").setLevel(logging.ERROR)


class UnreadableDocument(Exception):
    """A source that cannot be ingested; the message starts with its path."""


@dataclass(frozen=True)
class ParsedDocument:
    name: str
    kind: DocumentKind
    content_hash: str
    passages: list[Passage]

    def commit_request(self, origin: Origin) -> CommitRequest:
        """The request that stores this document in a tenant's knowledge base."""
        return CommitRequest(
            name=self.name, kind=self.kind, origin=origin, content_hash=self.content_hash, passages=self.passages
        )


def file_hash(data: bytes) -> str:
    """A file's `content_hash`: the same bytes, the same document (nothing to parse or embed again)."""
    return hashlib.sha256(data).hexdigest()


def expand(paths: Sequence[Path]) -> list[tuple[Path, str]]:
    """The files to ingest and their document names: a file by its own name, a folder's files by their
    path inside it (recursively, supported kinds only, in name order)."""
    found: dict[str, Path] = {}
    for path in paths:
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in KINDS and not _hidden(p.relative_to(path))
            )
            if not files:
                raise UnreadableDocument(f"{path}: no Markdown, text, CSV or PDF file in this folder")
            named = [(p, p.relative_to(path).as_posix()) for p in files]
        elif path.is_file():
            if path.suffix.lower() not in KINDS:
                raise UnreadableDocument(f"{path}: not a Markdown, text, CSV or PDF file (by its extension)")
            named = [(path, path.name)]
        else:
            raise UnreadableDocument(f"{path}: no such file or folder")
        for file, name in named:
            if name in found and found[name] != file:
                raise UnreadableDocument(f"{file}: has the same document name as {found[name]} ({name!r})")
            found[name] = file
    return [(file, name) for name, file in found.items()]


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def read_document(path: Path, name: str, language: str | None, detector: LanguageDetector) -> ParsedDocument:
    """Read and chunk one file; `language` None: detected from its text."""
    _kind(path)
    _check_name(path, name)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise UnreadableDocument(f"{path}: larger than {MAX_FILE_BYTES // (1024 * 1024)} MB")
        data = path.read_bytes()
    except OSError as error:
        raise UnreadableDocument(f"{path}: cannot be read ({error.strerror})") from None
    return parse_document(data, path, name, language, detector)


def parse_document(
    data: bytes, source: PurePath, name: str, language: str | None, detector: LanguageDetector
) -> ParsedDocument:
    """Chunk a file's bytes held in memory (a ConfigMap's key): `source`'s extension gives its kind, its stem
    titles passages without a heading, and it starts every error message; `language` None: detected."""
    kind = _kind(source)
    _check_name(source, name)
    try:
        pieces = list(_READERS[kind](data, source.stem))
    except UnreadableDocument as error:
        raise UnreadableDocument(f"{source}: {error}") from None
    if not pieces:
        raise UnreadableDocument(f"{source}: has no text to ingest")
    if len(pieces) > MAX_PASSAGES_PER_DOCUMENT:
        raise UnreadableDocument(
            f"{source}: {len(pieces)} passages; split it into files of at most {MAX_PASSAGES_PER_DOCUMENT}"
        )
    document_language = language or detector.detect("\n".join(body for _, body, _ in pieces[:50]))
    passages = [
        Passage(title=title[:2000], body=body, language=own or document_language) for title, body, own in pieces
    ]
    return ParsedDocument(name, kind, file_hash(data), passages)


def _kind(source: PurePath) -> DocumentKind:
    kind = KINDS.get(source.suffix.lower())
    if kind is None:
        raise UnreadableDocument(f"{source}: not a Markdown, text, CSV or PDF file (by its extension)")
    return kind


def _check_name(source: PurePath, name: str) -> None:
    if not re.fullmatch(DOCUMENT_NAME_PATTERN, name):
        raise UnreadableDocument(
            f"{source}: {name!r} cannot name a document (at most 255 characters, no control characters)"
        )


def inline_document(
    name: str, entries: Sequence[FaqEntrySpec], language: str | None, detector: LanguageDetector
) -> ParsedDocument:
    """The tenant spec's inline questions and answers as one document."""
    text = "\n".join(f"{e.question}\n{e.answer}" for e in entries)
    document_language = language or (detector.detect(text) if text else "en")
    passages = [Passage(title=e.question, body=e.answer, language=e.language or document_language) for e in entries]
    digest = hashlib.sha256(repr([(p.title, p.body, p.language) for p in passages]).encode()).hexdigest()
    return ParsedDocument(name, "inline", digest, passages)


# A piece: (title, body, its own language or None).
Piece = tuple[str, str, str | None]


def _text(data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UnreadableDocument(f"not UTF-8 text (byte {error.start})") from None
    if "\x00" in text:
        raise UnreadableDocument("holds NUL bytes: not a text file")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _markdown(data: bytes, stem: str) -> Iterator[Piece]:
    headings: list[tuple[int, str]] = []  # (level, text): the path to the current section
    body: list[str] = []
    fence = ""  # the open code fence's marker, if any

    def section() -> Iterator[Piece]:
        text = "\n".join(body).strip()
        body.clear()
        if text:
            title = TITLE_SEPARATOR.join(heading for _, heading in headings) if headings else stem
            for part in _cut(text):
                yield title, part, None

    for line in _text(data).split("\n"):
        opening = FENCE.match(line)
        if opening is not None and (not fence or opening.group(1).startswith(fence)):
            fence = "" if fence else opening.group(1)
        match = None if fence or opening else HEADING.match(line)
        if match is None:
            body.append(line)
            continue
        yield from section()
        level = len(match.group(1))
        # A heading closes every section at its level or below, even when levels were skipped.
        while headings and headings[-1][0] >= level:
            headings.pop()
        headings.append((level, match.group(2)))
    yield from section()


def _plain(data: bytes, stem: str) -> Iterator[Piece]:
    for part in _cut(_text(data).strip()):
        yield stem, part, None


def _csv(data: bytes, _stem: str) -> Iterator[Piece]:
    try:
        rows = list(csv.reader(io.StringIO(_text(data))))
    except csv.Error as error:
        raise UnreadableDocument(f"not valid CSV ({error})") from None
    if not rows:
        return
    header = [cell.strip().casefold() for cell in rows[0]]
    if "question" not in header or "answer" not in header:
        raise UnreadableDocument("a CSV needs the header question,answer (and optionally language)")
    question, answer = header.index("question"), header.index("answer")
    language = header.index("language") if "language" in header else None
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        cells = [*row, *[""] * (len(header) - len(row))]
        asked, answered = cells[question].strip(), cells[answer].strip()
        if not asked or not answered:
            raise UnreadableDocument(f"row {number} has no {'question' if not asked else 'answer'}")
        if len(answered) > MAX_ANSWER_CHARS:
            raise UnreadableDocument(
                f"row {number}: the answer has {len(answered):,} characters, at most {MAX_ANSWER_CHARS:,}"
            )
        own = cells[language].strip().lower() if language is not None else ""
        if own and not re.fullmatch(r"[a-z]{2,3}", own):
            raise UnreadableDocument(f"row {number}: language {own!r} is not an ISO 639-1 code")
        yield asked, answered, own or None


def _pdf(data: bytes, stem: str) -> Iterator[Piece]:
    try:
        reader = PdfReader(io.BytesIO(data))
        encrypted = reader.is_encrypted
        pages = [] if encrypted else [(n, page.extract_text() or "") for n, page in enumerate(reader.pages, start=1)]
    except PyPdfError as error:
        raise UnreadableDocument(f"not a readable PDF ({error})") from None
    except Exception as error:
        # Damage pypdf does not foresee surfaces as whatever failed (KeyError, NotImplementedError for
        # a mangled filter name, ...): any of them means this file cannot be read.
        raise UnreadableDocument(f"not a readable PDF ({type(error).__name__})") from None
    if encrypted:
        raise UnreadableDocument("is encrypted: save it without a password first")
    if not any(text.strip() for _, text in pages):
        raise UnreadableDocument("has no text layer (a scanned PDF needs OCR first)")
    for number, text in pages:
        for part in _cut(text.strip()):
            yield f"{stem} (page {number})", part, None


def _cut(text: str) -> Iterator[str]:
    """Paragraphs joined up to MAX_PASSAGE_CHARS; a longer paragraph is cut at sentence or word ends."""
    if not text:
        return
    current = ""
    for paragraph in (p.strip() for p in PARAGRAPH_BREAK.split(text)):
        if not paragraph:
            continue
        for piece in _split_long(paragraph):
            if current and len(current) + 2 + len(piece) > MAX_PASSAGE_CHARS:
                yield current
                current = piece
            else:
                current = f"{current}\n\n{piece}" if current else piece
    if current:
        yield current


def _split_long(paragraph: str) -> Iterator[str]:
    while len(paragraph) > MAX_PASSAGE_CHARS:
        window = paragraph[:MAX_PASSAGE_CHARS]
        cut = max(window.rfind(". "), window.rfind("\n"))
        if cut < MAX_PASSAGE_CHARS // 2:
            cut = window.rfind(" ")
        if cut < MAX_PASSAGE_CHARS // 2:
            cut = MAX_PASSAGE_CHARS - 1
        yield paragraph[: cut + 1].strip()
        paragraph = paragraph[cut + 1 :].strip()
    if paragraph:
        yield paragraph


_READERS = {"markdown": _markdown, "text": _plain, "csv": _csv, "pdf": _pdf}
