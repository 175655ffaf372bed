"""Erasure through the admin API and the CLI, against real NATS, Redis and SQLite."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import cast

import httpx
import pytest
from fastapi import FastAPI
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import SecretStr
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from tests.analytics.handoffs import add_handoff
from tests.support import meta
from tests.support.cli import declare_streams, run_zapflow
from tests.support.dead_letters import file_webhook_part
from tests.support.http import serve
from tests.support.platform import Platform, eventually, running_platform
from tests.support.servers import ManagedServer, free_port
from zapflow.analytics.archive import Archiver
from zapflow.analytics.warehouse import open_warehouse
from zapflow.platform import bus, catalogue
from zapflow.platform.keys import ContactKeys
from zapflow.platform.service import create_app
from zapflow.platform.settings import CoreSettings
from zapflow.privacy.api import erasures_router
from zapflow.privacy.erasure import Eraser
from zapflow.scheduler.app import SCHEDULER
from zapflow.scheduler.jobs import Jobs
from zapflow.scheduler.leader import Scheduler
from zapflow.scheduler.settings import SchedulerSettings
from zapflow.store.engine import create_engine
from zapflow.store.models import Erasure, Handoff, HandoffEvent, Message
from zapflow.tenants.registry import TenantRegistry

FORGOTTEN = "5511966660001"
KEPT = "5511966660002"
ADMIN = {"Authorization": "Bearer changethis"}


@pytest.fixture
async def admin(core: CoreSettings, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The scheduler's admin API (its jobs tick once an hour: these tests drive nothing through them)."""
    core = core.model_copy(update={"analytics_path": tmp_path / "analytics.duckdb"})
    app = create_app(SCHEDULER, SchedulerSettings(core=core, interval_seconds=3600))
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        yield client


async def say(platform: Platform, customer: str, text: str) -> None:
    assert (await platform.deliver(meta.notification(platform.number, [meta.text(customer, text)]))).status_code == 200


async def recorded_messages(core: CoreSettings, customer: str, status: str | None = None) -> int:
    """The customer's messages in the store (with that delivery status, when given)."""
    engine = create_engine(core.database_url)
    try:
        async with engine.connect() as conn:
            query = select(func.count()).where(Message.contact == customer)
            if status is not None:
                query = query.where(Message.status == status)
            return int(await conn.scalar(query) or 0)
    finally:
        await engine.dispose()


async def stream_messages(js: JetStreamContext, stream: str, subject: str) -> int:
    info = await js.stream_info(stream, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def test_an_erasure_removes_the_contact_from_every_store_and_spares_the_others(
    core: CoreSettings, registry: TenantRegistry, js: JetStreamContext, admin: httpx.AsyncClient
) -> None:
    redis = Redis.from_url(core.redis_url, decode_responses=True)
    try:
        async with running_platform(core, registry, record=True) as platform:
            tenant = platform.tenant.name
            await say(platform, FORGOTTEN, "price")
            await say(platform, KEPT, "price")
            # The greeting and the price: the whole turn's replies.
            replies = {c: len(await platform.wait_for_texts(c, 2)) for c in (FORGOTTEN, KEPT)}

            async def both_delivered() -> bool | None:
                # The sandbox's delivery status comes last: once it is recorded, nothing about
                # these conversations is still on its way (a later one would be new data).
                delivered = {c: await recorded_messages(core, c, status="delivered") for c in replies}
                return True if delivered == replies else None

            await eventually(both_delivered, what="both conversations delivered and in the store")
            assert await redis.exists(ContactKeys(tenant, FORGOTTEN).conversation)

            erased = await admin.post("/admin/v1/erasures", json={"tenant": tenant, "phone": FORGOTTEN}, headers=ADMIN)

            assert erased.status_code == 201, erased.text
            summary = erased.json()["summary"]
            assert summary["streams"][catalogue.INBOUND.name] == 1
            assert summary["streams"][catalogue.OUTBOUND.name] >= 1
            assert summary["streams"][catalogue.EVENTS.name] >= 2  # the turn and the send result
            assert summary["redis"]["keys"] >= 1
            for subjects, stream in (
                (catalogue.inbound_subject, catalogue.INBOUND.name),
                (catalogue.outbound_subject, catalogue.OUTBOUND.name),
                (catalogue.status_subject, catalogue.STATUS.name),
            ):
                assert await stream_messages(js, stream, subjects(tenant, FORGOTTEN)) == 0
                assert await stream_messages(js, stream, subjects(tenant, KEPT)) >= 1
            assert (
                await stream_messages(js, catalogue.EVENTS.name, catalogue.event_subject("*", tenant, FORGOTTEN)) == 0
            )
            assert await redis.exists(*ContactKeys(tenant, FORGOTTEN).all()) == 0
            assert await redis.exists(ContactKeys(tenant, KEPT).conversation)
            assert await recorded_messages(core, FORGOTTEN) == 0
            assert await recorded_messages(core, KEPT) >= 2
    finally:
        await redis.aclose()
    listed = await admin.get("/admin/v1/erasures", params={"tenant": tenant}, headers=ADMIN)
    assert [entry["id"] for entry in listed.json()] == [erased.json()["id"]]
    assert FORGOTTEN not in listed.text


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"tenant": "acme", "phone": "call me maybe"}, "not a phone number"),
        ({"tenant": "Not A Tenant", "phone": "5511966660001"}, "tenant"),
        ({"tenant": "acme"}, "phone"),
    ],
)
async def test_bad_requests_get_a_reason(admin: httpx.AsyncClient, body: dict[str, str], reason: str) -> None:
    response = await admin.post("/admin/v1/erasures", json=body, headers=ADMIN)
    assert response.status_code == 422
    assert reason in response.text


async def test_the_admin_api_wants_the_admin_token(admin: httpx.AsyncClient) -> None:
    body = {"tenant": "acme", "phone": FORGOTTEN}
    assert (await admin.post("/admin/v1/erasures", json=body)).status_code == 401
    wrong = {"Authorization": "Bearer guess"}
    assert (await admin.post("/admin/v1/erasures", json=body, headers=wrong)).status_code == 401
    assert (await admin.get("/admin/v1/erasures", params={"tenant": "acme"})).status_code == 401


async def test_an_erasure_with_redis_down_is_a_503_to_retry(admin: httpx.AsyncClient, redis: ManagedServer) -> None:
    redis.stop()
    response = await admin.post("/admin/v1/erasures", json={"tenant": "acme", "phone": FORGOTTEN}, headers=ADMIN)
    assert response.status_code == 503
    assert "Redis" in response.json()["detail"] and "erase again" in response.json()["detail"]


async def test_listing_erasures_while_the_database_is_down_is_a_503(tmp_path: Path) -> None:
    # Nothing listens on the port: every connection the engine opens is refused.
    down = create_async_engine(f"postgresql+asyncpg://zapflow@127.0.0.1:{free_port()}/zapflow")

    async def eraser() -> Eraser:
        return Eraser(down, Redis(), cast(JetStreamContext, None), tmp_path / "analytics.duckdb", "secret")

    app = FastAPI()
    app.include_router(erasures_router(SecretStr(ADMIN["Authorization"].removeprefix("Bearer ")), eraser))
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        response = await client.get("/admin/v1/erasures", params={"tenant": "acme"}, headers=ADMIN)
    await down.dispose()
    assert response.status_code == 503
    assert response.json()["detail"].startswith("the database cannot answer: ")


class CountingJobs(Jobs):
    def __init__(self) -> None:
        self.ticks = 0
        self.ticked = asyncio.Event()

    async def run_all(self, now: datetime | None = None, rollup_claim: object = None) -> dict[str, bool]:
        self.ticks += 1
        self.ticked.set()
        return {}


async def test_one_scheduler_replica_runs_the_jobs_and_another_takes_over_when_it_stops(core: CoreSettings) -> None:
    redis = Redis.from_url(core.redis_url, decode_responses=True)
    first_jobs, second_jobs = CountingJobs(), CountingJobs()
    # Ticks of 0.25 s (a lease of 0.75 s): long enough that a loaded machine's pauses do not
    # let the lease lapse, short enough that the takeover is quick.
    first, second = Scheduler(first_jobs, redis, 0.25), Scheduler(second_jobs, redis, 0.25)
    try:
        first.start()
        await asyncio.wait_for(first_jobs.ticked.wait(), 10)
        second.start()
        for _ in range(3):  # several ticks of both: the lease stays with the first
            first_jobs.ticked.clear()
            await asyncio.wait_for(first_jobs.ticked.wait(), 10)
        assert second_jobs.ticks == 0
        await first.stop()
        await asyncio.wait_for(second_jobs.ticked.wait(), 10)  # once the lease expires
    finally:
        await first.stop()
        await second.stop()
        await redis.aclose()


def test_the_cli_erases_and_refuses_bad_input(core: CoreSettings, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ZAPFLOW_NATS_URL": core.nats_url,
        "ZAPFLOW_REDIS_URL": core.redis_url,
        "ZAPFLOW_DATABASE_URL": core.database_url,
        "ZAPFLOW_ANALYTICS_PATH": str(tmp_path / "analytics.duckdb"),
        "COLUMNS": "200",
    }
    bad = run_zapflow(env, "contact", "erase", "--tenant", "acme", "--phone", "12", "--yes")
    assert bad.returncode == 1
    assert "not a phone number" in bad.stderr and "Traceback" not in bad.stderr

    unreachable = run_zapflow(
        {**env, "ZAPFLOW_NATS_URL": "nats://127.0.0.1:1"}, "contact", "erase", "--tenant", "acme", "--phone",
        FORGOTTEN, "--yes",
    )  # fmt: skip
    assert unreachable.returncode == 1
    assert "cannot reach NATS" in unreachable.stderr and "Traceback" not in unreachable.stderr

    asyncio.run(declare_streams(core.nats_url))  # as the services do: an erasure refuses a NATS without them
    done = run_zapflow(env, "contact", "erase", "--tenant", "acme", "--phone", f"+{FORGOTTEN}", "--yes")
    assert done.returncode == 0, done.stderr
    assert "erasure" in done.stdout and FORGOTTEN not in done.stdout

    async def recorded() -> list[tuple[str, str]]:
        engine = create_engine(core.database_url)
        try:
            async with engine.connect() as conn:
                return [tuple(row) for row in await conn.execute(select(Erasure.tenant, Erasure.requested_by))]  # type: ignore[misc]
        finally:
            await engine.dispose()

    assert asyncio.run(recorded()) == [("acme", "cli")]


async def test_every_subject_that_can_carry_the_contact_is_erased_dead_letters_included(
    core: CoreSettings, js: JetStreamContext, tmp_path: Path
) -> None:
    await bus.ensure_streams(js, catalogue.ALL_STREAMS)
    subjects = {
        catalogue.INBOUND.name: catalogue.inbound_subject("acme", "{c}"),
        catalogue.STATUS.name: catalogue.status_subject("acme", "{c}"),
        catalogue.OUTBOUND.name: catalogue.outbound_subject("acme", "{c}"),
        catalogue.EVENTS.name: catalogue.event_subject("turn", "acme", "{c}"),
        catalogue.DEAD_LETTER.name: catalogue.dead_letter_subject(
            catalogue.RECORDER_SERVICE, catalogue.inbound_subject("acme", "{c}")
        ),
        catalogue.TIMER_STREAM.name: catalogue.due_subject("reengage", "acme", "{c}"),
    }
    for contact in (FORGOTTEN, KEPT):
        for subject in subjects.values():
            await js.publish(subject.format(c=contact), b"words of " + contact.encode())
        await js.publish(
            catalogue.dead_letter_subject(catalogue.GATEWAY_SERVICE, catalogue.result_subject("acme", contact)),
            b"a dead result",
        )
    await js.publish(catalogue.inbound_subject("globex", FORGOTTEN), b"the same person at another tenant")
    redis = Redis.from_url(core.redis_url, decode_responses=True)
    engine = create_engine(core.database_url)
    try:
        eraser = Eraser(engine, redis, js, tmp_path / "analytics.duckdb", "secret")
        record = await eraser.erase("acme", FORGOTTEN, "cli")
    finally:
        await engine.dispose()
        await redis.aclose()

    assert record.summary["streams"] == {
        catalogue.INBOUND.name: 1,
        catalogue.STATUS.name: 1,
        catalogue.OUTBOUND.name: 1,
        catalogue.EVENTS.name: 1,
        catalogue.DEAD_LETTER.name: 2,
        catalogue.TIMER_STREAM.name: 1,
    }
    for stream, subject in subjects.items():
        assert await stream_messages(js, stream, subject.format(c=FORGOTTEN)) == 0
        assert await stream_messages(js, stream, subject.format(c=KEPT)) == 1
    assert await stream_messages(js, catalogue.INBOUND.name, catalogue.inbound_subject("globex", FORGOTTEN)) == 1


async def test_an_erasure_erases_the_unattributed_dead_letters_that_name_the_contact(
    core: CoreSettings, js: JetStreamContext, tmp_path: Path
) -> None:
    await bus.ensure_streams(js, catalogue.ALL_STREAMS)
    own = await file_webhook_part(js, "acme", FORGOTTEN, b'{"text": 7}', "text: not an object")
    erased = [
        own,
        await file_webhook_part(js, "acme", None, f'{{"from": "{FORGOTTEN}", "x": [}}'.encode(), "not JSON"),
        # A whole unreadable body goes with everything in it, the other customer's part too.
        await file_webhook_part(js, "acme", None, f'[{{"wa_id": "{KEPT}"}}, {{"wa_id": {FORGOTTEN}}}'.encode(), "cut"),
        await file_webhook_part(js, "acme", None, b"{}", f"contact {FORGOTTEN} is not a string"),
    ]
    kept = [
        await file_webhook_part(js, "acme", None, f'{{"from": "{KEPT}"}}'.encode(), "no type"),
        await file_webhook_part(js, "acme", None, f'{{"from": "{FORGOTTEN}9"}}'.encode(), "another, longer number"),
        await file_webhook_part(js, "globex", None, f'{{"from": "{FORGOTTEN}"}}'.encode(), "another tenant's"),
    ]
    redis = Redis.from_url(core.redis_url, decode_responses=True)
    engine = create_engine(core.database_url)
    try:
        record = await Eraser(engine, redis, js, tmp_path / "analytics.duckdb", "secret").erase(
            "acme", FORGOTTEN, "cli"
        )
    finally:
        await engine.dispose()
        await redis.aclose()

    assert record.summary["streams"][catalogue.DEAD_LETTER.name] == len(erased)

    async def stored(seq: int) -> bool:
        try:
            await js.get_msg(catalogue.DEAD_LETTER.name, seq=seq)
        except NotFoundError:
            return False
        return True

    assert [await stored(seq) for seq in erased] == [False] * len(erased)
    assert [await stored(seq) for seq in kept] == [True] * len(kept)


async def test_an_erasure_removes_the_contacts_handoffs_and_notes_and_unlinks_their_figures(
    core: CoreSettings, js: JetStreamContext, tmp_path: Path
) -> None:
    await bus.ensure_streams(js, catalogue.ALL_STREAMS)
    redis = Redis.from_url(core.redis_url, decode_responses=True)
    engine = create_engine(core.database_url)
    warehouse = tmp_path / "analytics.duckdb"
    try:
        await add_handoff(engine, FORGOTTEN, requested=0, assigned=5, first_reply=9, resolved=60, note="owes 300")
        await add_handoff(engine, FORGOTTEN, requested=120, assigned=125, note="call back at five")  # still open
        await add_handoff(engine, KEPT, requested=0, assigned=5, resolved=60, note="prefers Spanish")
        await redis.set(ContactKeys("acme", FORGOTTEN).owner, "turn-1")  # the open handoff's owner key
        assert await Archiver(engine, warehouse, "secret").archive_resolved_handoffs() == 2

        record = await Eraser(engine, redis, js, warehouse, "secret").erase("acme", FORGOTTEN, "cli")

        async with engine.connect() as conn:
            handoffs = list(await conn.scalars(select(Handoff.contact)))
            events = (await conn.execute(select(HandoffEvent.contact, HandoffEvent.text))).all()
        assert await redis.exists(ContactKeys("acme", FORGOTTEN).owner) == 0
    finally:
        await engine.dispose()
        await redis.aclose()

    # Both handoffs, open or not, with their timelines: requested, assigned, reply, note, resolved;
    # requested, assigned, note.
    assert {table: record.summary["sql"]["rows"][table] for table in ("handoffs", "handoff_events")} == {
        "handoffs": 2,
        "handoff_events": 5 + 3,
    }
    assert handoffs == [KEPT]
    assert {contact for contact, _ in events} == {KEPT}
    assert [text for _, text in events if text] == ["prefers Spanish"]
    assert record.summary["analytics"]["handoffs"] == 1
    with open_warehouse(warehouse, read_only=True) as analytics:
        keys = [row[0] for row in analytics.execute("SELECT contact_key FROM handoffs ORDER BY contact_key").fetchall()]
    assert keys[0] == f"erased:{record.id}" and not keys[1].startswith("erased:")
