"""A conversation through the platform ends up in the relational store, once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from google.protobuf.message import Message as Event
from nats.js import JetStreamContext
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from tests.store.events import inbound, reply, sent, status, turn
from tests.support import meta
from tests.support.http import serve
from tests.support.platform import eventually, running_platform
from zapflow.platform import bus, catalogue
from zapflow.platform.service import create_app
from zapflow.platform.settings import CoreSettings
from zapflow.recorder.app import RECORDER
from zapflow.recorder.settings import RecorderSettings
from zapflow.recorder.writer import RECORDED_STREAMS
from zapflow.store.engine import create_engine
from zapflow.store.models import Message, MessageStatus, Turn
from zapflow.tenants.registry import TenantRegistry

CUSTOMER = "5511900001111"


def test_the_recorder_refuses_an_unmigrated_database(core: CoreSettings, tmp_path: Path) -> None:
    env = {**os.environ, "ZAPFLOW_NATS_URL": core.nats_url, "ZAPFLOW_DATABASE_URL": f"sqlite:///{tmp_path}/empty.db"}
    result = subprocess.run(
        [sys.executable, "-m", "zapflow", "recorder", "--port", "0"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "run `zapflow db upgrade`" in result.stderr
    assert "Traceback" not in result.stderr


async def test_messages_turns_and_statuses_are_recorded_once(core: CoreSettings, registry: TenantRegistry) -> None:
    database = create_engine(core.database_url)
    try:
        async with running_platform(core, registry, record=True) as platform:
            payload = meta.notification(platform.number, [meta.text(CUSTOMER, "price")])
            for _ in range(2):  # a duplicate webhook
                assert (await platform.deliver(payload)).status_code == 200
            await platform.wait_for_texts(CUSTOMER, 2)

            async def recorded() -> list[tuple[str, str, str | None]] | None:
                async with database.connect() as conn:
                    rows = (
                        await conn.execute(
                            select(Message.direction, Message.text, Message.status)
                            .where(Message.tenant == platform.tenant.name, Message.type.is_not(None))
                            .order_by(Message.id)
                        )
                    ).all()
                found = [(r.direction, r.text, r.status) for r in rows]
                delivered = [r for r in found if r[0] == "outbound" and r[2] == "delivered"]
                return found if len(found) == 3 and len(delivered) == 2 else None

            rows = await eventually(recorded, what="the conversation in the store, statuses included")
            assert [(d, t) for d, t, _ in rows] == [
                ("inbound", "price"),
                ("outbound", "Welcome!"),
                ("outbound", "It costs $10."),
            ]
            async with database.connect() as conn:
                turns = (await conn.execute(select(func.count()).select_from(Turn))).scalar_one()
            assert turns == 1
    finally:
        await database.dispose()


def batch_metric(sample: str) -> float:
    return REGISTRY.get_sample_value(f"zapflow_recorder_batch_events_{sample}") or 0.0


async def test_a_burst_of_events_is_written_in_fewer_transactions_than_events(
    core: CoreSettings, js: JetStreamContext
) -> None:
    """Every kind of event, 20 contacts' worth, waiting on the bus when the recorder starts."""
    await bus.ensure_streams(js, RECORDED_STREAMS)
    burst: list[tuple[str, Event, str]] = []
    for n in range(20):
        tenant, contact, turn_id = "acme", f"55119{n:08d}", f"in{n}-{n}"
        command = reply(turn_id, 0, "Plans start at $10.", contact=contact)
        burst += [
            (catalogue.inbound_subject(tenant, contact), inbound(f"wamid.{n}", contact=contact), f"wamid.{n}"),
            (catalogue.event_subject("turn", tenant, contact), turn(turn_id, [f"wamid.{n}"], contact=contact), turn_id),
            (catalogue.outbound_subject(tenant, contact), command, command.command_id),
            (catalogue.event_subject("sent", tenant, contact), sent(command, f"wamid.out.{n}"), f"{turn_id}:0:result"),
            (
                catalogue.status_subject(tenant, contact),
                status(f"wamid.out.{n}", "delivered", contact=contact),
                f"wamid.out.{n}:delivered",
            ),
        ]
    await asyncio.gather(*(bus.publish(js, subject, event, msg_id) for subject, event, msg_id in burst))
    batches, events = batch_metric("count"), batch_metric("sum")
    database = create_engine(core.database_url)
    try:
        async with serve(create_app(RECORDER, RecorderSettings(core=core))):

            async def everything_recorded() -> bool:
                async with database.connect() as conn:
                    messages = await conn.scalar(
                        select(func.count()).select_from(Message).where(Message.type.is_not(None))
                    )
                    delivered = await conn.scalar(
                        select(func.count()).select_from(Message).where(Message.status == "delivered")
                    )
                    turns = await conn.scalar(select(func.count()).select_from(Turn))
                    statuses = await conn.scalar(select(func.count()).select_from(MessageStatus))
                return (messages, delivered, turns, statuses) == (40, 20, 20, 20)

            await eventually(everything_recorded, what="every event of the burst in the store")
    finally:
        await database.dispose()

    assert batch_metric("sum") - events == len(burst)
    assert batch_metric("count") - batches < len(burst)
