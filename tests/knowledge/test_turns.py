"""Finished turns are embedded from ZF_EVENTS into turn_vectors and searched as the `turns`
collection: by meaning, once per turn, only for the tenants a replica serves, and never after
their row is erased."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from nats.js import JetStreamContext
from sqlalchemy import delete, func, select

from tests.support.knowledge import TENANT, replica, run_sql
from tests.support.platform import eventually
from zapflow.knowledge.client import KnowledgeClient
from zapflow.knowledge.messages import SearchRequest
from zapflow.knowledge.service import Knowledge
from zapflow.platform import bus, catalogue
from zapflow.platform.settings import CoreSettings
from zapflow.store.models import TurnVector
from zapflow.v1 import knowledge_pb2, turn_pb2

STARTED = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)


def turn(customer_text: str, answer_text: str, tenant: str = TENANT, contact: str = "5511999990001") -> turn_pb2.Turn:
    started_at = Timestamp()
    started_at.FromDatetime(STARTED)
    return turn_pb2.Turn(
        turn_id=f"turn-{uuid.uuid4().hex[:12]}",
        tenant=tenant,
        contact=contact,
        customer_text=customer_text,
        answer_text=answer_text,
        started_at=started_at,
        outcome="answered",
    )


async def publish(js: JetStreamContext, finished: turn_pb2.Turn, msg_id: str | None = None) -> int:
    """Publish the turn as the conversation engine does; its stream sequence."""
    subject = catalogue.turn_subject(finished.tenant, finished.contact)
    ack = await bus.publish(js, subject, finished, msg_id or finished.turn_id)
    return int(ack.seq)


async def turn_rows(core: CoreSettings, tenant: str, turn_id: str | None = None) -> list[TurnVector]:
    query = select(TurnVector).where(TurnVector.tenant == tenant)
    if turn_id is not None:
        query = query.where(TurnVector.turn_id == turn_id)
    return [TurnVector(**row._asdict()) for row in await run_sql(core, query)]


async def settled(js: JetStreamContext, durable: str, seq: int) -> None:
    """Wait until the turn consumer has acknowledged every event up to `seq`."""

    async def acknowledged() -> bool:
        info = await js.consumer_info(catalogue.EVENTS.name, durable)
        return info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= seq

    await eventually(acknowledged, what=f"the turn consumer to settle event {seq}")


async def test_a_finished_turn_is_found_by_meaning(
    core: CoreSettings, js: JetStreamContext, knowledge: KnowledgeClient
) -> None:
    broken = turn("Meu pedido chegou quebrado, o que eu faço?", "Sentimos muito! Envie uma foto e trocamos.")
    others = [
        turn("Vocês abrem no domingo?", "Abrimos das 10h às 18h aos domingos."),
        turn("Aceitam pagamento no Pix?", "Sim, com 5% de desconto."),
    ]
    async with replica(core):  # the local model: meaning is the point here
        for finished in (broken, *others):
            await publish(js, finished)

        async def three_rows() -> bool:
            return len(await turn_rows(core, TENANT)) == 3

        await eventually(three_rows, timeout=30, what="the turns' rows")
        [row] = await turn_rows(core, TENANT, broken.turn_id)
        assert (row.customer_text, row.answer_text, row.language) == (broken.customer_text, broken.answer_text, "pt")
        assert row.vector, "the row holds the customer's words' vector"
        found = await knowledge.search(
            TENANT, SearchRequest(text="a encomenda veio toda danificada", collection="turns", limit=3)
        )
        assert found.mode == "hybrid"
        best = found.hits[0]
        assert (best.turn_id, best.contact, best.title, best.body) == (
            broken.turn_id,
            broken.contact,
            broken.customer_text,
            broken.answer_text,
        )
        assert best.at is not None and best.at.replace(tzinfo=UTC) == STARTED
        runner_up = found.hits[1].similarity
        assert best.similarity is not None and runner_up is not None and best.similarity > runner_up


async def test_a_redelivered_turn_adds_no_row(core: CoreSettings, js: JetStreamContext) -> None:
    finished = turn("Qual o prazo de entrega para Recife?", "De 5 a 8 dias úteis.")
    async with replica(core, backend="none") as knowledge:
        await publish(js, finished)
        # The same turn again under another message id: JetStream's dedup window does not catch it.
        again = await publish(js, finished, f"{finished.turn_id}-redelivered")
        await settled(js, catalogue.EMBED_TURNS.durable, again)
        assert len(await turn_rows(core, TENANT, finished.turn_id)) == 1
        assert len(knowledge.index_of(TENANT).turns) == 1
        found = await knowledge.search(TENANT, SearchRequest(text="prazo de entrega Recife", collection="turns"))
        assert [(hit.turn_id, hit.similarity) for hit in found.hits] == [(finished.turn_id, None)]
        assert found.mode == "lexical"


async def test_a_turn_of_a_tenant_the_replica_does_not_serve_is_not_embedded(
    core: CoreSettings, js: JetStreamContext
) -> None:
    foreign = turn("Qual o horário da loja?", "Das 10h às 22h.", tenant="other")
    own = turn("Qual o horário da loja?", "Das 9h às 21h.")
    async with replica(core, backend="none", tenants=[TENANT], shard="one") as knowledge:
        await publish(js, foreign)
        seq = await publish(js, own)
        await settled(js, f"{catalogue.EMBED_TURNS.durable}-one", seq)
        assert [row.turn_id for row in await turn_rows(core, TENANT)] == [own.turn_id]
        assert await turn_rows(core, "other") == []
        # Handed the turn directly, the replica still leaves it alone.
        await knowledge.embed_turn(foreign)
        assert await turn_rows(core, "other") == []
        assert not knowledge.serves("other")


async def test_an_erased_turn_is_no_longer_found(core: CoreSettings, js: JetStreamContext) -> None:
    erased = turn("Quero cancelar minha assinatura do clube", "Cancelado, você não será mais cobrado.")
    kept = turn("Como funciona a assinatura do clube?", "Você ganha pontos a cada compra.")
    question = SearchRequest(text="assinatura do clube", collection="turns")
    async with replica(core, backend="none") as knowledge:
        await publish(js, erased)
        await settled(js, catalogue.EMBED_TURNS.durable, await publish(js, kept))
        found = await knowledge.search(TENANT, question)
        assert {hit.turn_id for hit in found.hits} == {erased.turn_id, kept.turn_id}
        await run_sql(core, delete(TurnVector).where(TurnVector.turn_id == erased.turn_id))
        found = await knowledge.search(TENANT, question)
        assert [hit.turn_id for hit in found.hits] == [kept.turn_id]
        assert len(knowledge.index_of(TENANT).turns) == 1, "the search dropped the erased turn from memory"


async def test_forgotten_turns_leave_every_replica(core: CoreSettings, js: JetStreamContext) -> None:
    finished = turn("Vocês entregam no sábado?", "Sim, de segunda a sábado.")
    async with replica(core, backend="none") as first, replica(core, backend="none") as second:
        await publish(js, finished)

        def rows_in(knowledge: Knowledge) -> set[str]:
            return set(knowledge.index_of(TENANT).turns.keys())

        async def in_both() -> bool:
            return len(rows_in(first)) == 1 and rows_in(first) == rows_in(second)

        await eventually(in_both, what="the turn in both replicas, whichever embedded it")
        [row] = await turn_rows(core, TENANT)
        # What erasure publishes once it deleted the rows.
        forgotten = knowledge_pb2.KnowledgeChange(tenant=TENANT, turn_rows=[row.id])
        subject = catalogue.knowledge_change_subject(TENANT, catalogue.TURNS_FORGOTTEN)
        await bus.publish(js, subject, forgotten, f"forget:{row.id}")

        async def gone_from_both() -> bool:
            return not rows_in(first) and not rows_in(second)

        await eventually(gone_from_both, what="both replicas to forget the turn")
    count = await run_sql(core, select(func.count()).select_from(TurnVector))
    assert count[0][0] == 1, "forgetting drops memory only: erasure deletes the rows"
