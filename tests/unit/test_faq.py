"""The faq responder over real NATS, against a stand-in for the embedding service that returns chosen hits."""

from __future__ import annotations

from typing import Any, Literal

import pytest
from nats.aio.client import Client as NATS
from prometheus_client import REGISTRY

from tests.support.platform import knowledge_stand_in
from tests.support.tenants import tenant_document
from tests.support.turns import ErrorLog
from zapflow.conversation.faq import RULE_MAX_CHARS, FaqResponder
from zapflow.conversation.llm import WHATSAPP_TEXT_LIMIT
from zapflow.conversation.responder import Answer, TurnInput
from zapflow.knowledge.client import KnowledgeClient
from zapflow.knowledge.messages import MAX_QUESTION_CHARS, ErrorReply, Hit, SearchReply
from zapflow.tenants.files import parse_tenant
from zapflow.tenants.model import BotTenant
from zapflow.v1 import inbound_pb2

GREETING = "Olá! Sou o assistente da loja."
FALLBACK = "Não encontrei essa resposta; um atendente vai falar com você."
SHIPPING = "O frete é grátis acima de R$ 299,00."


@pytest.fixture
def errors() -> ErrorLog:
    return ErrorLog()


@pytest.fixture
def responder(nc: NATS, errors: ErrorLog) -> FaqResponder:
    return FaqResponder(KnowledgeClient(nc), on_error=errors)


def faq_tenant(**faq: Any) -> BotTenant:
    document = tenant_document()
    document["spec"]["bot"] = {
        "responder": "faq",
        "faq": {"minSimilarity": 0.86, "minLexical": 4.0, **faq},
        "greeting": {"text": GREETING},
        "fallback": {"text": FALLBACK},
    }
    return parse_tenant(document)


def text(body: str) -> inbound_pb2.InboundMessage:
    return inbound_pb2.InboundMessage(type="text", text=inbound_pb2.Text(body=body))


def turn(tenant: BotTenant, *messages: inbound_pb2.InboundMessage, first_contact: bool = False) -> TurnInput:
    return TurnInput(
        turn_id="turn-1",
        tenant=tenant,
        contact="5511999990000",
        messages=messages or (text("qual o valor do frete?"),),
        first_contact=first_contact,
    )


def hit(similarity: float | None, lexical: float = 1.0, body: str = SHIPPING, document: str = "spec:faq") -> Hit:
    return Hit(
        score=1.0,
        similarity=similarity,
        lexical=lexical,
        title="Qual o valor do frete?",
        body=body,
        language="pt",
        document=document,
    )


def found(*hits: Hit, mode: Literal["hybrid", "lexical"] = "hybrid") -> SearchReply:
    return SearchReply(mode=mode, language="pt", hits=list(hits))


def texts(answer: Answer) -> list[str]:
    return [reply.text for reply in answer.replies]


def counted(tenant: BotTenant, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "zapflow_conversation_faq_answers_total", {"tenant": tenant.name, "outcome": outcome}
    )
    return value or 0.0


# --- Thresholds ---------------------------------------------------------------------------------


@pytest.mark.parametrize("similarity", [0.86, 0.95])
async def test_a_similar_enough_passage_is_the_answer(nc: NATS, responder: FaqResponder, similarity: float) -> None:
    tenant = faq_tenant()
    async with knowledge_stand_in(nc, tenant.name, found(hit(similarity))) as knowledge:
        answer = await responder.answer(turn(tenant))

    assert (answer.outcome, texts(answer), answer.rule) == ("faq", [SHIPPING], "spec:faq")
    [request] = knowledge.requests
    assert (request.text, request.collection, request.limit) == ("qual o valor do frete?", "knowledge", 3)
    assert counted(tenant, "answered") == 1


async def test_a_passage_below_the_similarity_threshold_gives_the_fallback(nc: NATS, responder: FaqResponder) -> None:
    tenant = faq_tenant()
    # A high BM25 score does not count when there is a similarity: the model decides.
    async with knowledge_stand_in(nc, tenant.name, found(hit(0.8599, lexical=40.0))):
        answer = await responder.answer(turn(tenant))

    assert (answer.outcome, texts(answer), answer.rule) == ("fallback", [FALLBACK], "")
    assert counted(tenant, "below_threshold") == 1
    assert counted(tenant, "answered") == 0


@pytest.mark.parametrize(("lexical", "outcome"), [(4.0, "faq"), (12.5, "faq"), (3.99, "fallback")])
async def test_without_a_model_the_bm25_score_decides(
    nc: NATS, responder: FaqResponder, lexical: float, outcome: str
) -> None:
    tenant = faq_tenant()
    async with knowledge_stand_in(nc, tenant.name, found(hit(None, lexical=lexical), mode="lexical")):
        answer = await responder.answer(turn(tenant))

    assert answer.outcome == outcome
    assert texts(answer) == ([SHIPPING] if outcome == "faq" else [FALLBACK])


async def test_the_thresholds_are_the_tenant_s(nc: NATS, responder: FaqResponder) -> None:
    tenant = faq_tenant(minSimilarity=0.5)
    async with knowledge_stand_in(nc, tenant.name, found(hit(0.6))):
        answer = await responder.answer(turn(tenant))

    assert answer.outcome == "faq"


async def test_only_the_best_hit_can_answer(nc: NATS, responder: FaqResponder) -> None:
    tenant = faq_tenant()
    # The fused ranking put the first hit first; a closer second one does not overrule it.
    reply = found(hit(0.84, body="first"), hit(0.9, body="second"))
    async with knowledge_stand_in(nc, tenant.name, reply):
        answer = await responder.answer(turn(tenant))

    assert answer.outcome == "fallback"


async def test_an_empty_knowledge_base_gives_the_fallback(nc: NATS, responder: FaqResponder) -> None:
    tenant = faq_tenant()
    async with knowledge_stand_in(nc, tenant.name, found()):
        answer = await responder.answer(turn(tenant))

    assert (answer.outcome, texts(answer)) == ("fallback", [FALLBACK])
    assert counted(tenant, "no_knowledge") == 1


# --- What is asked and what is answered ----------------------------------------------------------


async def test_a_first_contact_gets_the_greeting_then_the_answer(nc: NATS, responder: FaqResponder) -> None:
    tenant = faq_tenant()
    async with knowledge_stand_in(nc, tenant.name, found(hit(0.9))):
        answer = await responder.answer(turn(tenant, first_contact=True))

    assert (answer.outcome, texts(answer)) == ("faq", [GREETING, SHIPPING])


async def test_a_first_contact_without_an_answer_gets_the_greeting_alone(nc: NATS, responder: FaqResponder) -> None:
    tenant = faq_tenant()
    async with knowledge_stand_in(nc, tenant.name, found(hit(0.7))):
        answer = await responder.answer(turn(tenant, text("oi"), first_contact=True))

    assert (answer.outcome, texts(answer)) == ("greeting", [GREETING])


async def test_a_turn_without_words_gives_the_fallback_without_a_search(nc: NATS, responder: FaqResponder) -> None:
    tenant = faq_tenant()
    sticker = inbound_pb2.InboundMessage(type="sticker", media=inbound_pb2.Media(kind="sticker"))
    photo = inbound_pb2.InboundMessage(type="image", media=inbound_pb2.Media(kind="image"))
    async with knowledge_stand_in(nc, tenant.name, found(hit(0.99))) as knowledge:
        answer = await responder.answer(turn(tenant, sticker, photo, text("   ")))

    assert (answer.outcome, texts(answer)) == ("fallback", [FALLBACK])
    assert knowledge.requests == []
    assert counted(tenant, "no_text") == 1


async def test_the_burst_s_words_are_searched_together(nc: NATS, responder: FaqResponder) -> None:
    tenant = faq_tenant()
    burst = (
        text("boa tarde"),
        inbound_pb2.InboundMessage(type="image", media=inbound_pb2.Media(kind="image", caption="esse aqui")),
        text("quanto é o frete?"),
    )
    async with knowledge_stand_in(nc, tenant.name, found(hit(0.9))) as knowledge:
        await responder.answer(turn(tenant, *burst))

    assert [r.text for r in knowledge.requests] == ["boa tarde\nesse aqui\nquanto é o frete?"]


async def test_a_burst_longer_than_a_search_takes_is_searched_by_its_newest_words(
    nc: NATS, responder: FaqResponder
) -> None:
    tenant = faq_tenant()
    burst = (text("a" * 3_000), text("b" * 3_000), text("qual o valor do frete?"))
    async with knowledge_stand_in(nc, tenant.name, found(hit(0.9))) as knowledge:
        answer = await responder.answer(turn(tenant, *burst))

    assert answer.outcome == "faq"
    [request] = knowledge.requests
    assert len(request.text) == MAX_QUESTION_CHARS
    assert request.text.endswith("b\nqual o valor do frete?")


async def test_a_long_passage_is_cut_to_whatsapp_s_limit(nc: NATS, responder: FaqResponder) -> None:
    tenant = faq_tenant()
    async with knowledge_stand_in(nc, tenant.name, found(hit(0.9, body="palavra " * 1_000))):
        answer = await responder.answer(turn(tenant))

    [reply] = texts(answer)
    assert len(reply) == WHATSAPP_TEXT_LIMIT
    assert reply.endswith("…")


async def test_a_long_document_name_is_recorded_by_its_end(nc: NATS, responder: FaqResponder) -> None:
    tenant = faq_tenant()
    document = "spec:folder:/srv/knowledge/" + "x" * 80 + "/frete.md"
    async with knowledge_stand_in(nc, tenant.name, found(hit(0.9, document=document))):
        answer = await responder.answer(turn(tenant))

    assert len(answer.rule) == RULE_MAX_CHARS
    assert answer.rule.startswith("…")
    assert answer.rule.endswith("/frete.md")


# --- When the knowledge base cannot be searched ---------------------------------------------------


async def test_no_embedding_service_gives_the_fallback_and_reports_it(
    responder: FaqResponder, errors: ErrorLog
) -> None:
    tenant = faq_tenant()

    answer = await responder.answer(turn(tenant))

    assert (answer.outcome, texts(answer)) == ("error_fallback", [FALLBACK])
    assert errors.calls == [(tenant.name, "knowledge_unavailable")]
    assert counted(tenant, "unavailable") == 1


async def test_a_failed_search_gives_the_greeting_then_the_fallback(
    nc: NATS, responder: FaqResponder, errors: ErrorLog
) -> None:
    tenant = faq_tenant()
    async with knowledge_stand_in(nc, tenant.name, ErrorReply(code="failed", error="the model crashed")):
        answer = await responder.answer(turn(tenant, first_contact=True))

    assert (answer.outcome, texts(answer)) == ("error_fallback", [GREETING, FALLBACK])
    assert errors.calls == [(tenant.name, "knowledge_failed")]


async def test_a_failing_error_hook_does_not_break_the_answer(nc: NATS) -> None:
    def broken(tenant: str, kind: str) -> None:
        raise RuntimeError("metrics are down")

    tenant = faq_tenant()
    answer = await FaqResponder(KnowledgeClient(nc), on_error=broken).answer(turn(tenant))

    assert (answer.outcome, texts(answer)) == ("error_fallback", [FALLBACK])
