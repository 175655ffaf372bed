"""A customer's message end to end: sandbox → gateway → JetStream → conversation → egress → sandbox."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.js import JetStreamContext
from prometheus_client import REGISTRY

from tests.support import meta
from tests.support.platform import Platform, eventually, running_platform
from tests.support.tenants import tenant_document
from zapflow.platform import catalogue
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.files import parse_tenant
from zapflow.tenants.registry import TenantRegistry
from zapflow.v1 import turn_pb2

CUSTOMER = "5511977776666"


@pytest.fixture
async def platform(core: CoreSettings, registry: TenantRegistry) -> AsyncIterator[Platform]:
    async with running_platform(core, registry) as running:
        yield running


async def test_first_contact_is_greeted_then_rules_answer(platform: Platform) -> None:
    await platform.say(CUSTOMER, "hello there")
    assert await platform.wait_for_texts(CUSTOMER, 1) == ["Welcome!"]

    await platform.say(CUSTOMER, "what is the PRICE?")
    assert await platform.wait_for_texts(CUSTOMER, 2) == ["Welcome!", "It costs $10."]

    await platform.say(CUSTOMER, "blah")
    assert (await platform.wait_for_texts(CUSTOMER, 3))[-1] == "Sorry?"


async def test_button_replies_route_by_id(platform: Platform) -> None:
    answer = await platform.sandbox.post(
        "/sandbox/chat/send",
        json={
            "phone_number_id": platform.number,
            "from": CUSTOMER,
            "reply": {"kind": "button_reply", "id": "yes", "title": "Yes"},
        },
    )
    assert answer.json()["gateway_status"] == 200
    texts = await platform.wait_for_texts(CUSTOMER, 2)
    assert texts == ["Welcome!", "Confirmed."]
    buttons = (await platform.sent_to(CUSTOMER))[1]["payload"]["interactive"]["action"]["buttons"]
    assert buttons == [{"type": "reply", "reply": {"id": "again", "title": "Again"}}]


async def test_the_bot_marks_read_and_shows_typing(platform: Platform) -> None:
    wamid = await platform.say(CUSTOMER, "price")
    await platform.wait_for_texts(CUSTOMER, 2)

    async def read_receipt() -> list[dict[str, object]] | None:
        attempts = (await platform.sandbox.get("/sandbox/attempts")).json()["attempts"]
        found = [a for a in attempts if (a["request"] or {}).get("status") == "read"]
        return found or None

    receipt = (await eventually(read_receipt, what="a read receipt"))[0]
    assert receipt["request"] == {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": wamid,
        "typing_indicator": {"type": "text"},
    }


async def test_the_same_webhook_delivered_three_times_yields_one_reply(platform: Platform) -> None:
    payload = meta.notification(platform.number, [meta.text(CUSTOMER, "price")])
    for _ in range(3):
        assert (await platform.deliver(payload)).status_code == 200
    assert await platform.wait_for_texts(CUSTOMER, 2) == ["Welcome!", "It costs $10."]
    # A later message of the same contact is answered after any duplicate would have been.
    await platform.say(CUSTOMER, "anything else")
    assert await platform.wait_for_texts(CUSTOMER, 3) == ["Welcome!", "It costs $10.", "Sorry?"]


async def test_a_malformed_message_beside_a_good_one_is_dead_lettered_and_the_good_one_answered_once(
    platform: Platform, js: JetStreamContext
) -> None:
    other = "5511977775555"
    malformed = meta.text(other, "x") | {"text": ["not", "an", "object"]}
    payload = meta.notification(platform.number, [malformed, meta.text(CUSTOMER, "price")])
    for _ in range(3):  # Meta's retries of the same body
        answer = await platform.deliver(payload)
        assert answer.status_code == 200, answer.text
        assert answer.json()["accepted"]["messages"] == 1

    assert await platform.wait_for_texts(CUSTOMER, 2) == ["Welcome!", "It costs $10."]
    letter = await js.get_last_msg(
        catalogue.DEAD_LETTER.name, catalogue.webhook_dead_letter_subject(platform.tenant.name, other)
    )
    assert "text: Input should be a valid dictionary" in turn_pb2.DeadLetter.FromString(letter.data or b"").reason
    assert (await js.stream_info(catalogue.DEAD_LETTER.name)).state.messages == 1
    # Anything more for CUSTOMER comes after a later message's answer, in order: none did.
    await platform.say(CUSTOMER, "anything else")
    assert await platform.wait_for_texts(CUSTOMER, 3) == ["Welcome!", "It costs $10.", "Sorry?"]
    assert await platform.texts_to(other) == []


async def test_a_copy_resent_after_the_dedup_window_is_dropped_by_the_message_key(
    platform: Platform, js: JetStreamContext
) -> None:
    wamid = await platform.say(CUSTOMER, "price")
    assert await platform.wait_for_texts(CUSTOMER, 2) == ["Welcome!", "It costs $10."]
    stored = await js.get_last_msg(catalogue.INBOUND.name, catalogue.inbound_subject(platform.tenant.name, CUSTOMER))
    dropped = {"tenant": platform.tenant.name, "layer": "message_key"}
    before = REGISTRY.get_sample_value("zapflow_bus_duplicates_dropped_total", dropped) or 0.0
    # Meta's retry days later: same wamid, new stream message (past JetStream's 2-minute window).
    await js.publish(stored.subject or "", stored.data or b"", headers={"Nats-Msg-Id": f"{wamid}-days-later"})
    await platform.say(CUSTOMER, "anything else")
    assert await platform.wait_for_texts(CUSTOMER, 3) == ["Welcome!", "It costs $10.", "Sorry?"]
    assert REGISTRY.get_sample_value("zapflow_bus_duplicates_dropped_total", dropped) == before + 1


async def test_a_tenant_changed_while_running_takes_effect(platform: Platform, registry: TenantRegistry) -> None:
    await platform.say(CUSTOMER, "price")
    assert await platform.wait_for_texts(CUSTOMER, 2) == ["Welcome!", "It costs $10."]

    document = platform.tenant.document()
    document["spec"]["bot"]["rules"][0]["reply"]["text"] = "Now it costs $12."
    await registry.put(parse_tenant(document))

    async def new_price() -> list[str] | None:
        before = len(await platform.texts_to(CUSTOMER))
        await platform.say(CUSTOMER, "price")
        texts = await platform.wait_for_texts(CUSTOMER, before + 1)
        return texts if texts[-1] == "Now it costs $12." else None

    await eventually(new_price, what="the changed reply")


def test_tenant_fixture_is_unique() -> None:
    assert tenant_document()["metadata"]["name"] != tenant_document()["metadata"]["name"]
