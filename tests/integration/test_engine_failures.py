"""The engine's safety nets say so: a failure it survives is logged and counted, and it keeps answering."""

from __future__ import annotations

from nats.aio.client import Client as NATS
from prometheus_client import REGISTRY

from tests.support.platform import eventually, running_platform
from zapflow.platform import catalogue
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.registry import TenantRegistry

CUSTOMER = "5511955554444"
# A turn subject nobody writes to: the garbage stays out of every real contact's cursor rebuild.
STRANGER = "5511955550000"


def failures(kind: str) -> float:
    return REGISTRY.get_sample_value("zapflow_conversation_engine_failures_total", {"kind": kind}) or 0.0


async def test_an_undecodable_turn_event_is_counted_and_the_engine_keeps_answering(
    core: CoreSettings, registry: TenantRegistry, nc: NATS
) -> None:
    async with running_platform(core, registry, rules=[], fallback={"text": "ok"}) as platform:
        before = failures("turn_event")
        await nc.publish(catalogue.turn_subject(platform.tenant.name, STRANGER), b"\xff not a turn")

        async def counted() -> bool:
            return failures("turn_event") == before + 1

        await eventually(counted, what="the undecodable turn event to be counted")
        await platform.say(CUSTOMER, "hello")
        assert await platform.wait_for_texts(CUSTOMER, 1) == ["ok"]
