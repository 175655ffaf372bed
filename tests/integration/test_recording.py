"""A conversation through the platform ends up in the relational store, once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select

from tests.support import meta
from tests.support.platform import eventually, running_platform
from tests.support.tenants import secret
from zapflow.core.registry import TenantRegistry
from zapflow.core.settings import CoreSettings
from zapflow.store.engine import create_engine
from zapflow.store.models import Message, Turn

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
                body, headers = meta.signed(payload, secret(platform.tenant))
                assert (
                    await platform.gateway.post("/webhook/whatsapp", content=body, headers=headers)
                ).status_code == 200
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
