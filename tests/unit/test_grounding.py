"""Grounding of the openai responder: which passages the model is given, how, and the citations it may keep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from tests.support.http import serve
from tests.support.openai_server import FakeOpenAI, Text
from tests.support.platform import knowledge_stand_in
from tests.support.tenants import tenant_document
from zapflow.conversation.grounding import (
    NO_SOURCES_INSTRUCTION,
    SOURCES_INSTRUCTION,
    given_passages,
    grounding_message,
    keep_given_citations,
)
from zapflow.conversation.llm import OpenAIResponder
from zapflow.conversation.responder import Answer, TurnInput
from zapflow.knowledge.client import KnowledgeClient
from zapflow.knowledge.messages import ErrorReply, Hit, SearchReply
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.files import parse_tenant
from zapflow.tenants.model import BotTenant, GroundingSpec
from zapflow.v1 import inbound_pb2

FALLBACK = "Our assistant is unavailable, a person will answer soon."
PROMPT = "You answer customers of Casa Ventura."


def hit(similarity: float | None, lexical: float = 2.0, title: str = "Valor do frete", body: str = "R$ 15") -> Hit:
    return Hit(
        score=1.0,
        similarity=similarity,
        lexical=lexical,
        title=title,
        body=body,
        language="pt",
        document="pt/delivery.md",
    )


SHIPPING = hit(0.91, title="Entregas > Valor do frete", body="O frete custa R$ 15,00; grátis acima de R$ 299,00.")
PIX = Hit(
    score=0.8,
    similarity=0.88,
    lexical=1.5,
    title="Qual o desconto no Pix?",
    body="5% de desconto no Pix.",
    language="pt",
    document="spec:faq",
)
UNRELATED = hit(0.79, title="Lojas > Loja Curitiba", body="Rua XV de Novembro, 100.")


# --- Which passages, and how they are given --------------------------------------------------------


def test_passages_less_similar_than_the_threshold_are_not_given() -> None:
    spec = GroundingSpec(min_similarity=0.8)

    assert given_passages([SHIPPING, PIX, UNRELATED], spec) == [SHIPPING, PIX]
    assert given_passages([hit(0.8)], spec) == [hit(0.8)]
    assert given_passages([UNRELATED], spec) == []


def test_without_a_model_a_passage_sharing_a_term_with_the_question_is_given() -> None:
    shares_a_term, shares_none = hit(None, lexical=0.3), hit(None, lexical=0.0)

    assert given_passages([shares_a_term, shares_none], GroundingSpec()) == [shares_a_term]


def test_no_more_passages_than_the_spec_allows_are_given() -> None:
    assert given_passages([SHIPPING, PIX, hit(0.95)], GroundingSpec(passages=2)) == [SHIPPING, PIX]


def test_the_sources_are_numbered_under_the_instruction() -> None:
    untitled = Hit(
        score=0.5, similarity=0.9, lexical=1.0, title="", body="Plain text.", language="pt", document="a.txt"
    )

    assert grounding_message([SHIPPING, PIX, untitled]) == (
        f"{SOURCES_INSTRUCTION}\n\n"
        "[1] pt/delivery.md — Entregas > Valor do frete\nO frete custa R$ 15,00; grátis acima de R$ 299,00.\n\n"
        "[2] spec:faq — Qual o desconto no Pix?\n5% de desconto no Pix.\n\n"
        "[3] a.txt\nPlain text."
    )
    assert "say that you do not know, in the customer's language" in SOURCES_INSTRUCTION
    assert "as [n]" in SOURCES_INSTRUCTION


def test_without_sources_the_model_is_told_to_say_it_does_not_know() -> None:
    assert grounding_message([]) == NO_SOURCES_INSTRUCTION
    assert "say that you do not know, in the customer's language" in NO_SOURCES_INSTRUCTION


# --- Citations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "sources", "kept"),
    [
        ("O frete custa R$ 15 [1].", 2, "O frete custa R$ 15 [1]."),
        ("O frete custa R$ 15 [9].", 2, "O frete custa R$ 15."),
        ("Frete [1] e Pix [2], mais [3].", 2, "Frete [1] e Pix [2], mais."),
        ("Frete e Pix [1, 9, 2].", 2, "Frete e Pix [1, 2]."),
        ("Frete e Pix [7,9].", 2, "Frete e Pix."),
        ("[0] Frete grátis.", 2, "Frete grátis."),
        ("Não sei [1].", 0, "Não sei."),
        ("Sem citações.", 0, "Sem citações."),
        ("Frete [1][5]", 1, "Frete [1]"),
        ("Frete [1].\n\nPix [9]: 5%.", 1, "Frete [1].\n\nPix: 5%."),
        ("Frete[9] grátis", 1, "Frete grátis"),
        ("Veja a lista[0]", 1, "Veja a lista"),
    ],
)
def test_citations_of_sources_not_given_are_removed(answer: str, sources: int, kept: str) -> None:
    assert keep_given_citations(answer, sources) == kept


# --- The responder -------------------------------------------------------------------------------


@pytest.fixture
def development(tmp_path: Path) -> CoreSettings:
    return CoreSettings(environment="development", secrets_dir=tmp_path / "secrets")


def grounded_tenant(base_url: str, **grounding: Any) -> BotTenant:
    document = tenant_document()
    document["spec"]["bot"] = {
        "responder": "openai",
        "openai": {"baseUrl": base_url, "model": "test-model", "systemPrompt": PROMPT, "historyTurns": 0},
        "grounding": {"minSimilarity": 0.8, **grounding},
        "fallback": {"text": FALLBACK},
    }
    return parse_tenant(document)


def question(tenant: BotTenant, body: str = "qual o valor do frete?") -> TurnInput:
    message = inbound_pb2.InboundMessage(type="text", text=inbound_pb2.Text(body=body))
    return TurnInput(turn_id="turn-1", tenant=tenant, contact="5511999990000", messages=(message,))


async def ask(
    nc: NATS, core: CoreSettings, reply: SearchReply | ErrorReply | None, completion: str, **grounding: Any
) -> tuple[Answer, list[dict[str, Any]], int]:
    """One turn through the responder; the answer, the messages the model got, the searches made."""
    fake = FakeOpenAI()
    fake.script(Text(completion))
    responder = OpenAIResponder(core, knowledge=KnowledgeClient(nc))
    async with serve(fake.app()) as url:
        tenant = grounded_tenant(f"{url}/v1", **grounding)
        try:
            if reply is None:
                answer = await responder.answer(question(tenant))
                searches = 0
            else:
                async with knowledge_stand_in(nc, tenant.name, reply) as knowledge:
                    answer = await responder.answer(question(tenant))
                searches = len(knowledge.requests)
        finally:
            await responder.aclose()
    [request] = fake.requests
    return answer, request.messages, searches


def found(*hits: Hit) -> SearchReply:
    return SearchReply(mode="hybrid", language="pt", hits=list(hits))


async def test_the_model_gets_the_numbered_passages_and_its_unknown_citations_are_removed(
    nc: NATS, development: CoreSettings
) -> None:
    answer, messages, searches = await ask(
        nc, development, found(SHIPPING, PIX, UNRELATED), "O frete custa R$ 15,00 [1], e o Pix dá 5% [2] [9]."
    )

    assert searches == 1
    assert messages == [
        {"role": "system", "content": PROMPT},
        {"role": "system", "content": grounding_message([SHIPPING, PIX])},
        {"role": "user", "content": "qual o valor do frete?"},
    ]
    assert answer.outcome == "llm"
    assert [r.text for r in answer.replies] == ["O frete custa R$ 15,00 [1], e o Pix dá 5% [2]."]


async def test_when_no_passage_is_close_enough_the_model_is_told_to_say_it_does_not_know(
    nc: NATS, development: CoreSettings
) -> None:
    answer, messages, _ = await ask(nc, development, found(UNRELATED), "Não sei informar [1].")

    assert messages[1] == {"role": "system", "content": NO_SOURCES_INSTRUCTION}
    assert [r.text for r in answer.replies] == ["Não sei informar."]


async def test_a_tenant_without_a_knowledge_base_is_answered_as_before(nc: NATS, development: CoreSettings) -> None:
    answer, messages, searches = await ask(nc, development, found(), "See item [1] of the menu.")

    assert searches == 1
    assert [m["role"] for m in messages] == ["system", "user"]
    assert [r.text for r in answer.replies] == ["See item [1] of the menu."]


async def test_an_unreachable_knowledge_base_does_not_fail_the_turn(nc: NATS, development: CoreSettings) -> None:
    answer, messages, _ = await ask(nc, development, None, "O frete custa R$ 15,00.")

    assert [m["role"] for m in messages] == ["system", "user"]
    assert (answer.outcome, [r.text for r in answer.replies]) == ("llm", ["O frete custa R$ 15,00."])


async def test_a_failed_search_does_not_fail_the_turn(nc: NATS, development: CoreSettings) -> None:
    answer, messages, searches = await ask(nc, development, ErrorReply(code="failed", error="boom"), "Olá!")

    assert searches == 1
    assert [m["role"] for m in messages] == ["system", "user"]
    assert answer.outcome == "llm"


async def test_disabled_grounding_searches_nothing(nc: NATS, development: CoreSettings) -> None:
    answer, messages, searches = await ask(nc, development, found(SHIPPING), "Veja [3].", enabled=False)

    assert searches == 0
    assert [m["role"] for m in messages] == ["system", "user"]
    assert [r.text for r in answer.replies] == ["Veja [3]."]


async def test_an_answer_made_only_of_unknown_citations_gives_the_fallback(nc: NATS, development: CoreSettings) -> None:
    answer, _, _ = await ask(nc, development, found(SHIPPING), "[4]")

    assert (answer.outcome, [r.text for r in answer.replies]) == ("error_fallback", [FALLBACK])


async def test_the_search_asks_for_as_many_passages_as_the_spec_gives(nc: NATS, development: CoreSettings) -> None:
    fake = FakeOpenAI()
    responder = OpenAIResponder(development, knowledge=KnowledgeClient(nc))
    async with serve(fake.app()) as url:
        tenant = grounded_tenant(f"{url}/v1", passages=7)
        async with knowledge_stand_in(nc, tenant.name, found(SHIPPING)) as knowledge:
            await responder.answer(question(tenant, "  quanto é o frete?  "))
        await responder.aclose()

    [request] = knowledge.requests
    assert (request.text, request.collection, request.limit) == ("quanto é o frete?", "knowledge", 7)
