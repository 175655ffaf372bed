"""WhatsApp's rules on the turn path: a message that reached us after its window closed, and opt-outs."""

from __future__ import annotations

import time

from nats.js import JetStreamContext

from tests.support import meta
from tests.support.platform import Platform, running_platform
from zapflow.platform import catalogue
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.registry import TenantRegistry
from zapflow.v1 import turn_pb2

CUSTOMER = "5511977770001"
LATE_TEMPLATE = {"messaging": {"lateTemplate": {"name": "sorry_we_missed_you", "bodyParameters": ["{name}"]}}}


async def next_turn(subscription: JetStreamContext.PushSubscription) -> turn_pb2.Turn:
    return turn_pb2.Turn.FromString((await subscription.next_msg(timeout=15)).data)


async def deliver_old_message(platform: Platform, text: str, hours_ago: float) -> None:
    """Meta delivers, now, a webhook for a message the customer sent hours ago."""
    message = meta.text(CUSTOMER, text) | {"timestamp": str(int(time.time() - hours_ago * 3600))}
    contacts = [{"profile": {"name": "Ana"}, "wa_id": CUSTOMER}]
    answer = await platform.deliver(meta.notification(platform.number, [message], contacts=contacts))
    assert answer.status_code == 200, answer.text


async def test_a_message_sent_25_hours_ago_gets_the_late_template_and_no_free_text(
    core: CoreSettings, registry: TenantRegistry, js: JetStreamContext
) -> None:
    async with running_platform(core, registry, spec=LATE_TEMPLATE) as platform:
        turns = await js.subscribe(catalogue.turn_subject(platform.tenant.name, CUSTOMER), stream=catalogue.EVENTS.name)
        await deliver_old_message(platform, "what is the price?", hours_ago=25)

        turn = await next_turn(turns)
        assert turn.outcome == "window_closed"
        assert await platform.wait_for_texts(CUSTOMER, 1) == ["[template sorry_we_missed_you]"]
        (sent,) = await platform.sent_to(CUSTOMER)
        assert sent["payload"]["template"]["components"] == [
            {"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}
        ]
        await turns.unsubscribe()


async def test_without_a_late_template_a_late_message_is_recorded_and_not_answered(
    core: CoreSettings, registry: TenantRegistry, js: JetStreamContext
) -> None:
    async with running_platform(core, registry) as platform:
        turns = await js.subscribe(catalogue.turn_subject(platform.tenant.name, CUSTOMER), stream=catalogue.EVENTS.name)
        await deliver_old_message(platform, "what is the price?", hours_ago=25)
        late = await next_turn(turns)
        # A message sent 23 hours ago is still inside the window: the bot answers it.
        await deliver_old_message(platform, "price", hours_ago=23)
        answered = await next_turn(turns)
        await turns.unsubscribe()

        assert (late.outcome, list(late.command_ids)) == ("window_closed", [])
        assert answered.outcome == "rule"
        assert await platform.wait_for_texts(CUSTOMER, 1) == ["It costs $10."]


async def test_stop_is_confirmed_once_and_kept_on_the_turn_for_campaigns(
    core: CoreSettings, registry: TenantRegistry, js: JetStreamContext
) -> None:
    async with running_platform(core, registry) as platform:
        turns = await js.subscribe(catalogue.turn_subject(platform.tenant.name, CUSTOMER), stream=catalogue.EVENTS.name)
        await platform.say(CUSTOMER, "price")
        await next_turn(turns)
        await platform.say(CUSTOMER, "STOP")
        first = await next_turn(turns)
        await platform.say(CUSTOMER, "stop!")
        second = await next_turn(turns)
        await platform.say(CUSTOMER, "price")
        await next_turn(turns)
        await turns.unsubscribe()

        confirmation = platform.tenant.spec.messaging.opt_out_confirmation
        assert (first.outcome, list(first.actions)) == ("opted_out", ["opt_out"])
        assert (second.outcome, list(second.actions), list(second.command_ids)) == ("opted_out", ["opt_out"], [])
        # Opting out of campaigns is not leaving the conversation: the bot still answers.
        assert await platform.wait_for_texts(CUSTOMER, 4) == [
            "Welcome!",
            "It costs $10.",
            confirmation,
            "It costs $10.",
        ]
