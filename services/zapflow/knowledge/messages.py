"""The knowledge requests and replies on NATS (JSON, validated by these models on both sides).

Requests are JSON rather than protobuf like the bus's events: they are questions and answers
between two processes of one release, never stored, and a malformed one must come back as a
reason a person can read (pydantic's), not as a decode error.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

LANGUAGE_PATTERN = r"^[a-z]{2,3}$"
# A document is named by its path relative to what was ingested: printable, no control characters.
DOCUMENT_NAME_PATTERN = r"^[^\x00-\x1f\x7f]{1,255}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
SPEC_PREFIX = "spec:"
MAX_PASSAGES_PER_EMBED = 256
MAX_PASSAGES_PER_DOCUMENT = 20_000
MAX_QUESTION_CHARS = 4_000

Language = Annotated[str, Field(pattern=LANGUAGE_PATTERN, description="ISO 639-1 code, e.g. pt")]
DocumentName = Annotated[str, Field(pattern=DOCUMENT_NAME_PATTERN)]
Collection = Literal["knowledge", "turns"]
DocumentKind = Literal["markdown", "text", "csv", "pdf", "inline"]
Origin = Literal["cli", "spec"]
ErrorCode = Literal["invalid", "quota", "not_found", "unavailable", "failed"]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Passage(Message):
    """What is retrieved: a section under its headings, or an FAQ question and its answer."""

    title: str = Field(max_length=2_000, description="Heading path (' > ' between levels), or the question.")
    body: str = Field(min_length=1, max_length=50_000, description="The section's text, or the answer.")
    language: Language

    @property
    def text(self) -> str:
        """What is embedded and indexed."""
        return f"{self.title}\n{self.body}" if self.title else self.body


class SearchRequest(Message):
    text: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    collection: Collection = "knowledge"
    limit: int = Field(default=5, ge=1, le=50)
    # Search in this language; None: the question's own, when the knowledge base has it.
    language: Language | None = None


class Hit(Message):
    score: float  # fused rank score, 0..1
    similarity: float | None  # cosine of question and passage; None in lexical mode
    lexical: float  # BM25
    title: str
    body: str
    language: str
    # knowledge: the document and the passage's position in it
    document: str = ""
    position: int = 0
    # turns: which conversation
    turn_id: str = ""
    contact: str = ""
    at: datetime | None = None


class SearchReply(Message):
    mode: Literal["hybrid", "lexical"]
    language: str | None  # the language searched (None: all)
    hits: list[Hit]


class EmbedRequest(Message):
    """Embed passages ahead of a commit (an ingest in batches, for progress); already known ones are skipped."""

    passages: list[Passage] = Field(min_length=1, max_length=MAX_PASSAGES_PER_EMBED)


class EmbedReply(Message):
    embedded: int
    reused: int


class DocumentInfo(Message):
    name: str
    kind: DocumentKind
    origin: Origin
    chunks: int
    content_hash: str
    updated_at: datetime
    languages: list[str] = Field(default_factory=list)


class CommitRequest(Message):
    """Replace a document's passages, as one transaction: all of them or none."""

    name: DocumentName
    kind: DocumentKind
    origin: Origin = "cli"
    content_hash: str = Field(pattern=SHA256_PATTERN)
    passages: list[Passage] = Field(max_length=MAX_PASSAGES_PER_DOCUMENT)

    @model_validator(mode="after")
    def _spec_names_are_the_specs(self) -> Self:
        # The spec sync replaces and removes `spec:` documents as the spec says: an ingested one would be lost.
        if self.origin != "spec" and self.name.startswith(SPEC_PREFIX):
            raise ValueError(f"document names starting with {SPEC_PREFIX!r} belong to the tenant spec")
        return self


class CommitReply(Message):
    document: DocumentInfo
    unchanged: bool  # the same content was there already: nothing was written
    added: int
    removed: int
    kept: int
    embedded: int


class ListRequest(Message):
    origin: Origin | None = None


class ListReply(Message):
    documents: list[DocumentInfo]
    chunks: int
    quota: int
    turns: int
    model: str | None


class ShowRequest(Message):
    name: DocumentName


class ShowReply(Message):
    document: DocumentInfo
    passages: list[Passage]


class RemoveRequest(Message):
    names: list[DocumentName] = Field(min_length=1, max_length=10_000)


class RemoveReply(Message):
    removed: list[str]
    missing: list[str]


class ErrorReply(Message):
    code: ErrorCode
    error: str
