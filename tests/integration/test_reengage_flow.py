"""Re-engagement through the whole platform: a turn the bot could not answer, a timer on the bus, a nudge."""

from __future__ import annotations

from prometheus_client import REGISTRY

from tests.support.platform import running_platform
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.registry import TenantRegistry

CUSTOMER = "5511977770002"
NUDGE = "Still there? Ask me in other words and I will try again."
# Two seconds after the customer's message: long enough for its turn to be answered first.
SOON_HOURS = 2 / 3600


async def test_an_unanswered_customer_gets_one_nudge_when_its_timer_fires(
    core: CoreSettings, registry: TenantRegistry
) -> None:
    rule = {"name": "unresolved", "when": "unanswered", "afterHours": SOON_HOURS, "text": NUDGE}
    spec = {"reengagement": {"rules": [rule]}}
    async with running_platform(core, registry, spec=spec, scheduler={}) as platform:
        await platform.say(CUSTOMER, "hello")
        await platform.wait_for_texts(CUSTOMER, 1)
        await platform.say(CUSTOMER, "mumble mumble")

        texts = await platform.wait_for_texts(CUSTOMER, 3)
        sent = REGISTRY.get_sample_value(
            "zapflow_scheduler_reengagements_total",
            {"tenant": platform.tenant.name, "rule": "unresolved", "outcome": "sent_text"},
        )

    assert texts == ["Welcome!", "Sorry?", NUDGE]
    assert sent == 1
