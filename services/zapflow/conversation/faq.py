"""The `faq` responder: the best passage of the tenant's knowledge base, word for word, or the fallback.

No model writes anything: the customer gets an answer the business wrote (an FAQ answer, or a
section of a document), in the question's language (the embedding service searches the language
the question is in when the knowledge base has several). The best hit answers when it is close
enough (FaqSpec): its cosine similarity reaches `min_similarity`, or, without an embedding model,
its BM25 score reaches `min_lexical`. Otherwise the turn gets what the rules responder gives when
no rule fires: the greeting alone on a first contact, else the fallback. When the knowledge base
cannot be searched, the customer gets the fallback (after the greeting on a first contact) and
`on_error(tenant, "knowledge_<code>")` is called.
"""

from __future__ import annotations

from zapflow.conversation.grounding import customer_text
from zapflow.conversation.llm import ErrorHook, fit_whatsapp
from zapflow.conversation.responder import Answer, TurnInput
from zapflow.knowledge.client import KnowledgeClient, KnowledgeError
from zapflow.knowledge.messages import Hit, SearchRequest
from zapflow.platform import metrics
from zapflow.platform.logging import get_logger
from zapflow.tenants.model import BotSpec, FaqSpec, ReplySpec

log = get_logger(__name__)

# The best hit answers; two more are only there to show in the log how close the next ones came.
SEARCH_LIMIT = 3
# The store's turns.rule column: the answering document's name, its end kept (the file name says most).
RULE_MAX_CHARS = 64


def answers(hit: Hit, spec: FaqSpec) -> bool:
    """The hit is close enough to the question to be its answer."""
    if hit.similarity is not None:
        return hit.similarity >= spec.min_similarity
    return hit.lexical >= spec.min_lexical


def source_name(document: str) -> str:
    """The document's name as a turn records it: at most RULE_MAX_CHARS, cut at the start."""
    return document if len(document) <= RULE_MAX_CHARS else "…" + document[-(RULE_MAX_CHARS - 1) :]


class FaqResponder:
    name = "faq"

    def __init__(self, knowledge: KnowledgeClient, on_error: ErrorHook | None = None) -> None:
        self._knowledge = knowledge
        self._on_error = on_error

    async def answer(self, turn: TurnInput) -> Answer:
        bot = turn.tenant.spec.bot
        greeting = (bot.greeting,) if turn.first_contact and bot.greeting is not None else ()
        question = customer_text(turn.messages)
        if not question:
            return self._unanswered(turn, bot, greeting, "no_text")
        request = SearchRequest(text=question, collection="knowledge", limit=SEARCH_LIMIT)
        try:
            reply = await self._knowledge.search(turn.tenant.name, request)
        except KnowledgeError as error:
            return self._failed(turn, bot, greeting, f"knowledge_{error.code}", str(error))
        if not reply.hits:
            return self._unanswered(turn, bot, greeting, "no_knowledge")
        best = reply.hits[0]
        # Scores only, never text: what an operator needs to tune the thresholds.
        similarity = round(best.similarity, 3) if best.similarity is not None else None
        scores = {"similarity": similarity, "lexical": round(best.lexical, 3), "mode": reply.mode}
        if not answers(best, bot.faq):
            log.info("faq_below_threshold", tenant=turn.tenant.name, turn_id=turn.turn_id, **scores)
            return self._unanswered(turn, bot, greeting, "below_threshold")
        log.info("faq_answered", tenant=turn.tenant.name, turn_id=turn.turn_id, document=best.document, **scores)
        metrics.FAQ_ANSWERS.labels(turn.tenant.name, "answered").inc()
        reply_text = ReplySpec(text=fit_whatsapp(best.body))
        return Answer("faq", (*greeting, reply_text), rule=source_name(best.document))

    def _unanswered(self, turn: TurnInput, bot: BotSpec, greeting: tuple[ReplySpec, ...], why: str) -> Answer:
        """As the rules responder when no rule fires: the greeting alone on a first contact, else the fallback."""
        metrics.FAQ_ANSWERS.labels(turn.tenant.name, why).inc()
        if greeting:
            return Answer("greeting", greeting)
        return Answer("fallback", (bot.fallback,))

    def _failed(self, turn: TurnInput, bot: BotSpec, greeting: tuple[ReplySpec, ...], kind: str, detail: str) -> Answer:
        """The question could not be looked up: the fallback says so, even after a greeting."""
        log.warning("faq_search_failed", tenant=turn.tenant.name, turn_id=turn.turn_id, reason=kind, detail=detail)
        metrics.FAQ_ANSWERS.labels(turn.tenant.name, "unavailable").inc()
        if self._on_error is not None:
            try:
                self._on_error(turn.tenant.name, kind)
            except Exception:
                log.exception("faq_error_hook_failed", tenant=turn.tenant.name)
        return Answer("error_fallback", (*greeting, bot.fallback))
