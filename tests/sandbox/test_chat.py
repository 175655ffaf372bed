"""The web chat's backend: customer messages to the gateway, the bot's actions back to the page."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.sandbox.helpers import (
    APP_SECRET,
    CUSTOMER,
    GRAPH_HEADERS,
    NUMBER,
    StartSandbox,
    WebhookReceiver,
    buttons_message,
    customer_writes,
    messages_url,
    open_chat_events,
    running_sandbox,
    text_message,
)

# The chat send fields every test repeats: which number, which customer.
FROM_CUSTOMER = {"phone_number_id": NUMBER, "from": CUSTOMER}


async def test_a_chat_message_reaches_the_gateway_signed_and_meta_shaped(
    start_sandbox: StartSandbox, receiver: WebhookReceiver
) -> None:
    async with start_sandbox() as sandbox:
        answer = await sandbox.post(
            "/sandbox/chat/send",
            json={"phone_number_id": NUMBER, "from": "+55 11 98888-7777", "name": "Maria", "text": "Hi there"},
        )
        webhook = await receiver.next()
        numbers = (await sandbox.get("/sandbox/numbers")).json()["numbers"]

    assert answer.status_code == 200, answer.text
    wamid = answer.json()["wamid"]
    assert answer.json()["gateway_status"] == 200
    assert answer.json()["wa_id"] == CUSTOMER
    assert webhook.signed_with(APP_SECRET)
    [number] = numbers
    message = webhook.value["messages"][0]
    assert webhook.payload == {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": number["waba_id"],
                "changes": [
                    {
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": number["display_phone_number"],
                                "phone_number_id": NUMBER,
                            },
                            "contacts": [{"profile": {"name": "Maria"}, "wa_id": CUSTOMER}],
                            "messages": [
                                {
                                    "from": CUSTOMER,
                                    "id": wamid,
                                    "timestamp": message["timestamp"],
                                    "type": "text",
                                    "text": {"body": "Hi there"},
                                }
                            ],
                        },
                        "field": "messages",
                    }
                ],
            }
        ],
    }
    assert wamid.startswith("wamid.")
    assert message["timestamp"].isdigit()


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ({"kind": "button_reply", "id": "yes", "title": "Yes"}, {"id": "yes", "title": "Yes"}),
        (
            {"kind": "list_reply", "id": "track", "title": "Track", "description": "Where is it?"},
            {"id": "track", "title": "Track", "description": "Where is it?"},
        ),
    ],
    ids=["button", "list"],
)
async def test_a_tap_on_a_button_or_row_sends_an_interactive_reply_quoting_the_message(
    start_sandbox: StartSandbox, receiver: WebhookReceiver, reply: dict[str, str], expected: dict[str, str]
) -> None:
    async with start_sandbox() as sandbox:
        answer = await sandbox.post(
            "/sandbox/chat/send",
            json={"phone_number_id": NUMBER, "from": CUSTOMER, "reply": reply, "context_message_id": "wamid.bot"},
        )
        webhook = await receiver.next()
        number = (await sandbox.get("/sandbox/numbers")).json()["numbers"][0]

    assert answer.status_code == 200, answer.text
    [message] = webhook.value["messages"]
    assert message["type"] == "interactive"
    assert message["interactive"] == {"type": reply["kind"], reply["kind"]: expected}
    assert message["context"] == {"from": number["display_phone_number"], "id": "wamid.bot"}
    assert webhook.signed_with(APP_SECRET)


async def test_the_gateways_error_answer_is_reported_not_hidden(
    start_sandbox: StartSandbox, receiver: WebhookReceiver
) -> None:
    receiver.failures_to_answer = 1
    receiver.failure_status = 503
    async with start_sandbox() as sandbox:
        answer = await sandbox.post("/sandbox/chat/send", json={**FROM_CUSTOMER, "text": "x"})

    assert answer.status_code == 200, answer.text
    assert answer.json()["gateway_status"] == 503


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening: connections to it are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_an_unreachable_gateway_is_a_502_with_the_reason(closed_port: int) -> None:
    webhook_url = f"http://127.0.0.1:{closed_port}/webhook/whatsapp"
    async with running_sandbox(webhook_url=webhook_url) as sandbox:
        chat = await sandbox.post("/sandbox/chat/send", json={**FROM_CUSTOMER, "text": "x"})
        raw = await sandbox.post("/sandbox/inbound", json={"entry": []}, params={"phone_number_id": NUMBER})

    for answer in (chat, raw):
        assert answer.status_code == 502
        assert "gateway unreachable" in answer.json()["detail"]
        assert webhook_url in answer.json()["detail"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({**FROM_CUSTOMER, "from": "abc", "text": "x"}, 422),
        (FROM_CUSTOMER, 422),
        ({**FROM_CUSTOMER, "text": "x", "reply": {"kind": "button_reply", "id": "a", "title": "A"}}, 422),
        ({**FROM_CUSTOMER, "reply": {"kind": "tap", "id": "a", "title": "A"}}, 422),
        ({**FROM_CUSTOMER, "text": ""}, 422),
        ({**FROM_CUSTOMER, "phone_number_id": "777", "text": "x"}, 404),
    ],
    ids=["bad-phone", "no-content", "text-and-reply", "unknown-reply-kind", "empty-text", "unknown-number"],
)
async def test_a_bad_chat_message_is_a_clear_4xx(
    shared_sandbox: httpx.AsyncClient, body: dict[str, Any], status: int
) -> None:
    answer = await shared_sandbox.post("/sandbox/chat/send", json=body)
    assert answer.status_code == status
    assert answer.json()["detail"]


async def test_any_raw_notification_is_signed_and_forwarded(
    start_sandbox: StartSandbox, receiver: WebhookReceiver
) -> None:
    notification = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "1",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": "15550000000", "phone_number_id": NUMBER},
                            "contacts": [{"profile": {"name": "Ana"}, "wa_id": CUSTOMER}],
                            "messages": [
                                {
                                    "from": CUSTOMER,
                                    "id": "wamid.location",
                                    "timestamp": "1700000000",
                                    "type": "location",
                                    "location": {"latitude": -23.5, "longitude": -46.6},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }
    async with start_sandbox() as sandbox:
        answer = await sandbox.post("/sandbox/inbound", json=notification)
        webhook = await receiver.next()

    assert answer.status_code == 200, answer.text
    assert answer.json()["gateway_status"] == 200
    assert webhook.payload == notification
    assert webhook.signed_with(APP_SECRET)


@pytest.mark.parametrize(
    ("payload", "params", "status"),
    [
        ({"object": "whatsapp_business_account", "entry": []}, {}, 400),
        ({"entry": [{"changes": [{"value": {"metadata": {"phone_number_id": "777"}}}]}]}, {}, 404),
        ({"entry": []}, {"phone_number_id": "777"}, 404),
        ([1, 2, 3], {}, 422),
    ],
    ids=["no-number", "unknown-number-in-payload", "unknown-number-in-query", "not-an-object"],
)
async def test_a_raw_notification_without_a_known_number_is_a_clear_4xx(
    shared_sandbox: httpx.AsyncClient, payload: Any, params: dict[str, str], status: int
) -> None:
    answer = await shared_sandbox.post("/sandbox/inbound", json=payload, params=params)
    assert answer.status_code == status
    assert answer.json()["detail"]


async def test_the_chat_feed_streams_the_bots_messages_reads_and_typing(
    start_sandbox: StartSandbox, receiver: WebhookReceiver
) -> None:
    async with start_sandbox() as sandbox, open_chat_events(sandbox) as events:
        await customer_writes(sandbox)
        await receiver.next()
        sent = await sandbox.post(messages_url(), json=buttons_message("Yes", "No"), headers=GRAPH_HEADERS)
        kind, message = await events.next()
        assert (kind, message["wamid"]) == ("message", sent.json()["messages"][0]["id"])
        assert message["payload"]["interactive"]["action"]["buttons"][1]["reply"]["title"] == "No"
        assert message["type"] == "interactive"

        inbound = await sandbox.post("/sandbox/chat/send", json={**FROM_CUSTOMER, "text": "hi"})
        await receiver.next()
        read = {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": inbound.json()["wamid"],
            "typing_indicator": {"type": "text"},
        }
        assert (await sandbox.post(messages_url(), json=read, headers=GRAPH_HEADERS)).json() == {"success": True}
        assert await events.next() == ("read", {"message_id": inbound.json()["wamid"]})
        assert await events.next() == ("typing", {"message_id": inbound.json()["wamid"]})


async def test_the_chat_feed_is_per_contact(sandbox: httpx.AsyncClient) -> None:
    async with open_chat_events(sandbox, contact="15550001111") as other, open_chat_events(sandbox) as mine:
        for to, body in [("15550001111", "for the other"), (CUSTOMER, "for me")]:
            await customer_writes(sandbox, to)
            await sandbox.post(messages_url(), json=text_message(to=to, body=body), headers=GRAPH_HEADERS)

        kind, message = await mine.next()
        assert (kind, message["payload"]["text"]["body"]) == ("message", "for me")
        kind, message = await other.next()
        assert (kind, message["payload"]["text"]["body"]) == ("message", "for the other")


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"phone_number_id": NUMBER, "contact": "nope"}, 400),
        ({"phone_number_id": "777", "contact": CUSTOMER}, 404),
        ({}, 422),
    ],
    ids=["bad-contact", "unknown-number", "missing"],
)
async def test_a_bad_chat_feed_request_is_a_clear_4xx(
    shared_sandbox: httpx.AsyncClient, params: dict[str, str], status: int
) -> None:
    answer = await shared_sandbox.get("/sandbox/chat/events", params=params)
    assert answer.status_code == status
    assert answer.json()["detail"]


async def test_the_chat_page_is_self_contained(shared_sandbox: httpx.AsyncClient) -> None:
    page = await shared_sandbox.get("/")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    # No build step and no internet: nothing may be loaded from elsewhere.
    for external in ("http://", "https://", "//cdn", 'src="http'):
        assert external not in page.text
    assert "/sandbox/chat/events" in page.text and "/sandbox/chat/send" in page.text
