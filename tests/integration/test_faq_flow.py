"""The knowledge base answering customers through the whole platform: the faq responder, and the
openai responder grounded in it, with the embedding service ingesting the tenant spec's inline FAQ."""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client as NATS

from tests.support.http import serve
from tests.support.openai_server import FakeOpenAI, Text
from tests.support.platform import Platform, eventually, running_platform
from zapflow.knowledge.client import KnowledgeClient, KnowledgeError
from zapflow.knowledge.messages import SearchRequest
from zapflow.knowledge.sync import FAQ_DOCUMENT
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.registry import TenantRegistry

FALLBACK = (
    "Não encontrei essa informação. Um atendente vai te responder. / I could not find that, a person will answer."
)
SHIPPING_PT = "O frete custa R$ 15,00 para todo o Brasil e é grátis em compras acima de R$ 299,00."
SHIPPING_EN = "Shipping costs R$ 15.00 anywhere in Brazil and is free on orders over R$ 299.00."
RETURNS_PT = "Você pode devolver qualquer produto em até 7 dias depois de recebê-lo, sem custo."
RETURNS_EN = "You can return any product within 7 days of receiving it, at no cost."

FAQ = [
    {"question": "Qual o valor do frete?", "answer": SHIPPING_PT, "language": "pt"},
    {"question": "Como faço para devolver um produto?", "answer": RETURNS_PT, "language": "pt"},
    {
        "question": "Quais formas de pagamento vocês aceitam?",
        "answer": "Aceitamos Pix (5% de desconto), boleto e cartão de crédito em até 10x sem juros.",
        "language": "pt",
    },
    {
        "question": "Qual o horário de atendimento?",
        "answer": "Atendemos de segunda a sábado, das 8h às 20h.",
        "language": "pt",
    },
    {"question": "How much is shipping?", "answer": SHIPPING_EN, "language": "en"},
    {"question": "How do I return a product?", "answer": RETURNS_EN, "language": "en"},
    {
        "question": "Which payment methods do you accept?",
        "answer": "We accept Pix (5% off), boleto and credit cards in up to 10 interest-free instalments.",
        "language": "en",
    },
    {
        "question": "What are your opening hours?",
        "answer": "We answer Monday to Saturday, from 8:00 to 20:00.",
        "language": "en",
    },
]
KNOWLEDGE = {"knowledge": {"faq": FAQ}}


def faq_bot(**faq: Any) -> dict[str, Any]:
    return {"responder": "faq", "faq": faq, "fallback": {"text": FALLBACK}}


async def ingested(nc: NATS, platform: Platform) -> None:
    """Wait for the embedding service to have ingested the spec's FAQ (its sync runs on its own)."""
    knowledge = KnowledgeClient(nc)

    async def searchable() -> bool:
        try:
            found = await knowledge.search(platform.tenant.name, SearchRequest(text="frete"))
        except KnowledgeError:  # the service is still starting
            return False
        # A document enters the index whole: one of its passages found means all of them are there.
        return any(hit.document == FAQ_DOCUMENT for hit in found.hits)

    await eventually(searchable, timeout=60, what="the spec's FAQ in the knowledge base")


async def answer_to(platform: Platform, customer: str, question: str) -> str:
    await platform.say(customer, question)
    [reply] = await platform.wait_for_texts(customer, 1)
    return reply


async def test_questions_get_the_answer_in_their_language_and_others_the_fallback(
    core: CoreSettings, registry: TenantRegistry, nc: NATS
) -> None:
    # The threshold is given, not the default: the questions were chosen against it (docs/knowledge.md).
    bot = faq_bot(minSimilarity=0.86)
    async with running_platform(core, registry, spec=KNOWLEDGE, embedding={}, **bot) as platform:
        await ingested(nc, platform)

        assert await answer_to(platform, "5511900000001", "quanto custa o frete?") == SHIPPING_PT
        assert await answer_to(platform, "5511900000002", "how much do you charge for delivery?") == SHIPPING_EN
        assert await answer_to(platform, "5511900000003", "quero devolver o produto que comprei") == RETURNS_PT
        assert await answer_to(platform, "5511900000004", "how can I return something I bought?") == RETURNS_EN
        assert await answer_to(platform, "5511900000005", "vocês vendem geladeira?") == FALLBACK
        assert await answer_to(platform, "5511900000006", "do you sell refrigerators?") == FALLBACK


async def test_without_a_model_the_bm25_threshold_decides(
    core: CoreSettings, registry: TenantRegistry, nc: NATS
) -> None:
    async with running_platform(
        core, registry, spec=KNOWLEDGE, embedding={"backend": "none"}, **faq_bot(minLexical=1.0)
    ) as platform:
        await ingested(nc, platform)

        assert await answer_to(platform, "5511900000011", "qual o valor do frete?") == SHIPPING_PT
        assert await answer_to(platform, "5511900000012", "how do I return a product?") == RETURNS_EN
        assert await answer_to(platform, "5511900000013", "vocês têm estacionamento?") == FALLBACK


async def test_the_openai_responder_is_given_the_passages_and_cites_only_those(
    core: CoreSettings, registry: TenantRegistry, nc: NATS
) -> None:
    fake = FakeOpenAI()
    async with serve(fake.app()) as llm:
        bot: dict[str, Any] = {
            "responder": "openai",
            "openai": {"baseUrl": f"{llm}/v1", "model": "local", "historyTurns": 0},
            "grounding": {"passages": 2, "minSimilarity": 0.8},
            "fallback": {"text": FALLBACK},
        }
        async with running_platform(core, registry, spec=KNOWLEDGE, embedding={}, **bot) as platform:
            await ingested(nc, platform)
            fake.script(Text("O frete custa R$ 15,00 [1], grátis acima de R$ 299,00 [9]."))

            reply = await answer_to(platform, "5511900000021", "quanto custa o frete?")

    assert reply == "O frete custa R$ 15,00 [1], grátis acima de R$ 299,00."
    [request] = fake.requests
    system, sources, question = request.messages
    assert system["role"] == sources["role"] == "system"
    assert question == {"role": "user", "content": "quanto custa o frete?"}
    assert f"[1] spec:faq — Qual o valor do frete?\n{SHIPPING_PT}" in sources["content"]
    assert "[3]" not in sources["content"]  # two passages at most
