"""`zapflow kb ingest|list|show|remove` and `zapflow search` as a person runs them: the real command in a
process of its own, against a real embedding service on the test's NATS."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fpdf import FPDF
from nats.js import JetStreamContext

from tests.knowledge.conftest import Embedding
from tests.support.cli import cli_environment, run_zapflow
from tests.support.platform import eventually
from tests.support.servers import ManagedServer
from zapflow.knowledge.client import KnowledgeClient
from zapflow.knowledge.documents import expand, read_document
from zapflow.knowledge.messages import SearchRequest
from zapflow.knowledge.text import LanguageDetector
from zapflow.platform import bus, catalogue
from zapflow.v1 import turn_pb2

# A dozen `zapflow` processes per test, each paying Python's start-up: on a loaded machine
# (two test workers on two cores) that alone nears the default 120 s.
pytestmark = pytest.mark.timeout(300)

KB = Path(__file__).resolve().parents[2] / "bench" / "retrieval" / "kb"
PT_FILES = [
    "account.md",
    "delivery.md",
    "faq.csv",
    "orders.md",
    "payment.md",
    "products.md",
    "returns.md",
    "stores.md",
    "warranty.md",
]


@pytest.fixture
def zapflow(nats: ManagedServer, tmp_path: Path) -> ZapflowCommand:
    return ZapflowCommand(nats.url, tmp_path)


class ZapflowCommand:
    """Runs `zapflow ... --nats-url <the test's>` off the event loop, which serves the embedding service meanwhile."""

    def __init__(self, nats_url: str, cwd: Path) -> None:
        self._nats_url = nats_url
        self._cwd = cwd  # no `zapflow dev` stack there: the command talks to the test's NATS only

    async def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = await asyncio.to_thread(
            run_zapflow, cli_environment(), *args, "--nats-url", self._nats_url, cwd=self._cwd
        )
        assert "Traceback" not in result.stderr, result.stderr
        return result


def table(stdout: str) -> dict[str, list[str]]:
    """A rich table's body rows, by their first cell."""
    rows = {}
    for line in stdout.splitlines():
        if line.startswith("│"):
            cells = [cell.strip() for cell in line.strip("│").split("│")]
            rows[cells[0]] = cells[1:]
    return rows


def chunks_of(folder: Path) -> dict[str, int]:
    """Each document's passage count, read as the command reads them."""
    detector = LanguageDetector()
    return {name: len(read_document(path, name, None, detector).passages) for path, name in expand([folder])}


def corrupt_pdf(path: Path) -> None:
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    pdf.add_page()
    pdf.multi_cell(0, 8, "Price list: the Lumen lamp costs R$ 189.")
    whole = bytes(pdf.output())
    path.write_bytes(whole[: len(whole) // 2])


async def test_ingest_list_show_search_and_remove(
    embedding_service: Embedding, zapflow: ZapflowCommand, knowledge: KnowledgeClient
) -> None:
    expected = chunks_of(KB / "pt")
    async with embedding_service(backend="none"):
        ingested = await zapflow("kb", "ingest", "--tenant", "shop", str(KB / "pt"))
        assert ingested.returncode == 0, ingested.stderr
        rows = table(ingested.stdout)
        assert sorted(rows) == PT_FILES
        for name, cells in rows.items():
            assert cells == [str(expected[name]), f"{expected[name]} added, 0 removed, 0 kept", "0"], name
        assert "documents: 9 changed, 0 unchanged; passages embedded: 0" in ingested.stdout
        # Not a terminal: the progress bar is printed once, when it ends, rather than at every batch.
        progress = [line for line in ingested.stderr.splitlines() if line.startswith("embedding")]
        total = sum(expected.values())
        assert len(progress) == 1 and f"{total}/{total} passages" in progress[0], ingested.stderr

        listed = await zapflow("kb", "list", "--tenant", "shop")
        assert listed.returncode == 0, listed.stderr
        rows = table(listed.stdout)
        assert sorted(rows) == PT_FILES
        assert rows["faq.csv"][:4] == ["csv", "cli", str(expected["faq.csv"]), "pt"]
        assert rows["delivery.md"][:4] == ["markdown", "cli", str(expected["delivery.md"]), "pt"]
        assert (
            f"documents: 9; chunks: {total} of 100,000 (the quota); turns indexed: 0; model: none (lexical search only)"
            in listed.stdout
        )

        shown = await zapflow("kb", "show", "--tenant", "shop", "delivery.md")
        assert shown.returncode == 0, shown.stderr
        assert "kind          markdown" in shown.stdout
        assert sum(line.startswith("#") for line in shown.stdout.splitlines()) == expected["delivery.md"]
        assert "#3  Entrega > Valor do frete  (pt)" in shown.stdout
        assert "Frete grátis nas compras a partir de R$ 299,00" in shown.stdout

        found = await zapflow("search", "--tenant", "shop", "--knowledge", "qual o valor do frete?")
        assert found.returncode == 0, found.stderr
        assert found.stdout.startswith("searched the knowledge base of tenant shop (lexical search), best first:\n")
        first = found.stdout.splitlines()[2]
        assert first.startswith("1. score ") and "similarity n/a (lexical)" in first, found.stdout
        assert "delivery.md  Entrega > Valor do frete  (pt)" in first

        removed = await zapflow("kb", "remove", "--tenant", "shop", "delivery.md", "brochure.pdf")
        assert removed.returncode == 1
        assert "removed delivery.md" in removed.stdout
        assert "error: tenant shop has no document named brochure.pdf" in removed.stderr

        left = await knowledge.list_documents("shop")
        assert [document.name for document in left.documents] == [name for name in PT_FILES if name != "delivery.md"]
        missing = await zapflow("kb", "show", "--tenant", "shop", "delivery.md")
        assert missing.returncode == 1
        assert "error: tenant shop has no document 'delivery.md'" in missing.stderr


async def test_a_second_ingest_embeds_only_what_changed(
    embedding_service: Embedding, zapflow: ZapflowCommand, tmp_path: Path
) -> None:
    folder = tmp_path / "kb"
    shutil.copytree(KB / "pt", folder)
    async with embedding_service():  # the local model: embedding counts are real
        first = await zapflow("kb", "ingest", "--tenant", "shop", str(folder))
        assert first.returncode == 0, first.stderr
        assert all(int(cells[2]) > 0 for cells in table(first.stdout).values()), first.stdout

        again = await zapflow("kb", "ingest", "--tenant", "shop", str(folder))
        assert again.returncode == 0, again.stderr
        assert {tuple(cells[1:]) for cells in table(again.stdout).values()} == {("unchanged", "0")}
        assert "documents: 0 changed, 9 unchanged; passages embedded: 0" in again.stdout

        delivery = folder / "delivery.md"
        text = delivery.read_text()
        old = "A retirada em qualquer uma das nossas 4 lojas é grátis."
        assert old in text
        delivery.write_text(text.replace(old, "A retirada em qualquer uma das nossas 5 lojas é grátis."))
        changed = await zapflow("kb", "ingest", "--tenant", "shop", str(folder))
        assert changed.returncode == 0, changed.stderr
        rows = table(changed.stdout)
        chunks = chunks_of(folder)["delivery.md"]
        assert rows.pop("delivery.md") == [str(chunks), f"1 added, 1 removed, {chunks - 1} kept", "1"]
        assert {tuple(cells[1:]) for cells in rows.values()} == {("unchanged", "0")}

        found = await zapflow("search", "--tenant", "shop", "--knowledge", "--limit", "1", "posso retirar na loja?")
        assert found.returncode == 0, found.stderr
        assert found.stdout.startswith("searched the knowledge base of tenant shop (hybrid search), best first:\n")
        best = found.stdout.splitlines()[2]
        assert "similarity 0." in best and "delivery.md  Entrega > Retirada na loja" in best, found.stdout
        assert "nossas 5 lojas" in found.stdout


async def test_a_refused_ingest_leaves_the_knowledge_base_as_it_was(
    embedding_service: Embedding, zapflow: ZapflowCommand, tmp_path: Path
) -> None:
    folder = tmp_path / "kb"
    shutil.copytree(KB / "pt", folder)
    spanish = tmp_path / "faq-es.csv"
    shutil.copyfile(KB / "es" / "faq.csv", spanish)
    quota = sum(chunks_of(folder).values()) + 1  # the Portuguese base fits; it and the Spanish questions do not
    async with embedding_service(backend="none", max_chunks_per_tenant=quota):
        assert (await zapflow("kb", "ingest", "--tenant", "shop", str(folder))).returncode == 0
        before = await zapflow("kb", "list", "--tenant", "shop")

        # Files before the broken one, in name order, are new or changed: none of them may reach the base.
        (folder / "delivery.md").write_text("# Entrega\nSó entregamos em Marte.\n")
        (folder / "about.md").write_text("# Sobre\nA Casa Ventura nasceu em 1998.\n")
        broken = folder / "zz-price-list.pdf"
        corrupt_pdf(broken)
        refused = await zapflow("kb", "ingest", "--tenant", "shop", str(folder))
        assert refused.returncode == 1
        assert refused.stderr.startswith(f"error: {broken}: not a readable PDF"), refused.stderr
        assert "nothing was ingested" in refused.stderr
        assert refused.stdout == ""

        over = await zapflow("kb", "ingest", "--tenant", "shop", str(spanish))
        assert over.returncode == 1
        assert f"its quota is {quota}" in over.stderr and "nothing was ingested" in over.stderr, over.stderr

        after = await zapflow("kb", "list", "--tenant", "shop")
        assert after.stdout == before.stdout


async def test_one_tenants_documents_never_reach_another(
    embedding_service: Embedding, zapflow: ZapflowCommand, tmp_path: Path
) -> None:
    other = tmp_path / "coupons.md"
    other.write_text("# Cupons\nO cupom SEGREDOB dá 50% de desconto no frete.\n")
    async with embedding_service(backend="none"):
        assert (await zapflow("kb", "ingest", "--tenant", "a", str(KB / "pt"))).returncode == 0
        assert (await zapflow("kb", "ingest", "--tenant", "b", str(other))).returncode == 0

        assert sorted(table((await zapflow("kb", "list", "--tenant", "b")).stdout)) == ["coupons.md"]

        # "frete" is in both bases: each tenant finds its own passages only.
        in_a = await zapflow("search", "--tenant", "a", "--knowledge", "--limit", "50", "cupom SEGREDOB frete")
        assert "delivery.md" in in_a.stdout
        assert "coupons.md" not in in_a.stdout and "SEGREDOB" not in in_a.stdout
        in_b = await zapflow("search", "--tenant", "b", "--knowledge", "--limit", "50", "qual o valor do frete?")
        assert "coupons.md" in in_b.stdout
        assert "delivery.md" not in in_b.stdout


async def test_search_finds_past_conversations(
    embedding_service: Embedding, zapflow: ZapflowCommand, js: JetStreamContext, knowledge: KnowledgeClient
) -> None:
    turn = turn_pb2.Turn(
        turn_id="turn-1",
        tenant="shop",
        contact="5511987654321",
        customer_text="vocês entregam no sábado?",
        answer_text="Sim, de segunda a sábado.",
    )
    turn.started_at.FromDatetime(datetime(2025, 3, 14, 15, 9, tzinfo=UTC))
    async with embedding_service(backend="none"):
        await bus.publish(js, catalogue.turn_subject(turn.tenant, turn.contact), turn, "turn-1")

        async def indexed() -> bool:
            return bool((await knowledge.search("shop", SearchRequest(text="sábado", collection="turns"))).hits)

        await eventually(indexed, what="the turn indexed")

        found = await zapflow("search", "--tenant", "shop", "entregam no sábado")
        assert found.returncode == 0, found.stderr
        lines = found.stdout.splitlines()
        assert lines[0] == "searched past conversations of tenant shop (lexical search), best first:"
        assert "2025-03-14 15:09 UTC  5511987654321  (pt)" in lines[2]
        assert lines[3:5] == ["    customer: vocês entregam no sábado?", "    bot: Sim, de segunda a sábado."]

        elsewhere = await zapflow("search", "--tenant", "other", "entregam no sábado")
        assert elsewhere.stdout.strip() == "no results in past conversations of tenant other"


async def test_mistakes_and_a_missing_service_are_clear_messages(zapflow: ZapflowCommand) -> None:
    listed = await zapflow("kb", "list", "--tenant", "shop")
    assert listed.returncode == 1
    assert "error: no embedding service serves tenant shop" in listed.stderr
    assert "`zapflow embedding` runs it" in listed.stderr

    bad_tenant = await zapflow("search", "--tenant", "Shop_1", "frete")
    assert bad_tenant.returncode == 1
    assert "error: --tenant: 'Shop_1' is not a tenant name" in bad_tenant.stderr

    bad_language = await zapflow("kb", "ingest", "--tenant", "shop", "--language", "portuguese", str(KB / "pt"))
    assert bad_language.returncode == 1
    assert "error: --language: 'portuguese' is not an ISO 639-1 code" in bad_language.stderr
