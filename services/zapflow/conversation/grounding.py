"""The tenant's knowledge base, for the responders: the question a turn asks, and for the `openai`
responder the passages it is given and the citations its answer may keep.

How grounding decides (GroundingSpec):

* The knowledge base is searched with the customer's words (not the `[image]`-style rendering the
  model sees); the best `passages` hits are candidates.
* With an embedding model, a hit is given when its cosine similarity reaches `min_similarity`.
  Without one (similarity None: the service runs lexical-only, or a passage has no vector yet),
  a hit is given when it shares at least one term with the question (BM25 above zero): BM25 has no
  fixed scale to put a threshold on, the candidates are few, and the model is told to use only
  what answers the question.
* No hit at all means the tenant has no knowledge base (a search ranks every passage of the
  language): nothing is added, and the bot answers exactly as it did before grounding existed.
* Hits but none given: the model is still told that the knowledge base holds nothing on the
  question and to say it does not know rather than invent facts (prices, deadlines, policies) —
  a tenant with a knowledge base wants its facts, not the model's.
* A failed search (service away, timeout) never fails the turn: it is answered without grounding.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from zapflow.conversation.responder import TurnInput
from zapflow.knowledge.client import KnowledgeClient, KnowledgeError
from zapflow.knowledge.messages import MAX_QUESTION_CHARS, Hit, SearchRequest
from zapflow.platform.logging import get_logger
from zapflow.tenants.model import GroundingSpec
from zapflow.v1 import inbound_pb2
from zapflow.whatsapp.messages import message_text

log = get_logger(__name__)

SOURCES_INSTRUCTION = (
    "Answer only from the numbered sources below, taken from the business's knowledge base, and from "
    "the conversation. When they do not hold the answer, say that you do not know, in the customer's "
    "language; never invent facts such as prices, deadlines or policies. Cite the sources you use as "
    "[n], with their numbers."
)
NO_SOURCES_INSTRUCTION = (
    "The business's knowledge base holds nothing on this question. Answer only from the conversation; "
    "when it does not hold the answer, say that you do not know, in the customer's language; never "
    "invent facts such as prices, deadlines or policies."
)

# [3] or [1, 2]: the form the model is asked for, and the list form models write anyway; with the
# spaces before it, so that "R$ 15 [9]." becomes "R$ 15." (line breaks stay: they shape the answer).
CITATION = re.compile(r"([ \t]*)\[(\d+(?:[ \t]*,[ \t]*\d+)*)\]")


def customer_text(messages: Sequence[inbound_pb2.InboundMessage]) -> str:
    """The words of a burst, a message a line; empty when it holds none (a sticker, a photo without caption)."""
    text = "\n".join(words for words in (message_text(m).strip() for m in messages) if words)
    # A longer burst is searched by its newest words.
    return text[-MAX_QUESTION_CHARS:].strip()


@dataclass(frozen=True)
class Grounding:
    """What the model is given from the knowledge base: one system message, numbering `sources` passages."""

    message: str
    sources: int


def given_passages(hits: Sequence[Hit], spec: GroundingSpec) -> list[Hit]:
    """The hits the model is given (the module's docstring says why lexical hits only need a shared term)."""
    return [
        hit
        for hit in hits[: spec.passages]
        if (hit.similarity >= spec.min_similarity if hit.similarity is not None else hit.lexical > 0)
    ]


def grounding_message(passages: Sequence[Hit]) -> str:
    """The system message: the instruction, then each passage numbered from 1."""
    if not passages:
        return NO_SOURCES_INSTRUCTION
    sources = []
    for number, hit in enumerate(passages, start=1):
        heading = f"[{number}] {hit.document} — {hit.title}" if hit.title else f"[{number}] {hit.document}"
        sources.append(f"{heading}\n{hit.body}")
    return SOURCES_INSTRUCTION + "\n\n" + "\n\n".join(sources)


def keep_given_citations(text: str, sources: int) -> str:
    """The answer without citations of sources it was not given: [n] must be 1..sources."""

    def kept(citation: re.Match[str]) -> str:
        numbers = [n for n in re.split(r"[ \t]*,[ \t]*", citation.group(2)) if 1 <= int(n) <= sources]
        return f"{citation.group(1)}[{', '.join(numbers)}]" if numbers else ""

    return CITATION.sub(kept, text).strip()


async def ground(knowledge: KnowledgeClient, turn: TurnInput) -> Grounding | None:
    """Search the knowledge base for the turn's question; None when the model gets nothing from it."""
    spec = turn.tenant.spec.bot.grounding
    question = customer_text(turn.messages)
    if not spec.enabled or not question:
        return None
    request = SearchRequest(text=question, collection="knowledge", limit=spec.passages)
    try:
        reply = await knowledge.search(turn.tenant.name, request)
    except KnowledgeError as error:
        # No embedding service at all is a deployment without knowledge bases, not a fault.
        quiet = error.code == "unavailable"
        (log.info if quiet else log.warning)(
            "grounding_search_failed", tenant=turn.tenant.name, turn_id=turn.turn_id, error=str(error)
        )
        return None
    if not reply.hits:
        return None
    passages = given_passages(reply.hits, spec)
    return Grounding(grounding_message(passages), len(passages))
