"""Status webhooks: Meta's shape, in order, signed over the exact bytes, retried on failure."""

from __future__ import annotations

from typing import Any

import httpx

from tests.sandbox.helpers import (
    APP_SECRET,
    CUSTOMER,
    GRAPH_HEADERS,
    NUMBER,
    ReceivedWebhook,
    StartSandbox,
    WebhookReceiver,
    customer_writes,
    messages_url,
    text_message,
)

FAST = {"status_sent_delay": 0.01, "status_delivered_delay": 0.01, "status_read_delay": 0.01}


async def customer_wrote(sandbox: httpx.AsyncClient, receiver: WebhookReceiver) -> None:
    """The customer writes first (a send needs their window open); their message is not a status."""
    await customer_writes(sandbox)
    assert "messages" in (await receiver.next()).value


def only_status(webhook: ReceivedWebhook) -> dict[str, Any]:
    [status] = webhook.value["statuses"]
    found: dict[str, Any] = status
    return found


async def test_sent_delivered_read_arrive_in_order_signed_and_meta_shaped(
    start_sandbox: StartSandbox, receiver: WebhookReceiver
) -> None:
    async with start_sandbox(statuses="read", **FAST) as sandbox:
        await customer_wrote(sandbox, receiver)
        answer = await sandbox.post(messages_url(), json=text_message(), headers=GRAPH_HEADERS)
        wamid = answer.json()["messages"][0]["id"]
        webhooks = [await receiver.next() for _ in range(3)]

    assert [only_status(w)["status"] for w in webhooks] == ["sent", "delivered", "read"]
    for webhook in webhooks:
        assert webhook.signed_with(APP_SECRET), webhook.body
        assert not webhook.signed_with("another-secret")
        payload = webhook.payload
        assert payload["object"] == "whatsapp_business_account"
        [entry] = payload["entry"]
        assert entry["id"].isdigit()
        [change] = entry["changes"]
        assert change["field"] == "messages"
        assert change["value"]["messaging_product"] == "whatsapp"
        assert change["value"]["metadata"]["phone_number_id"] == NUMBER
        assert change["value"]["metadata"]["display_phone_number"].isdigit()
        status = only_status(webhook)
        assert (status["id"], status["recipient_id"]) == (wamid, CUSTOMER)
        assert isinstance(status["timestamp"], str) and status["timestamp"].isdigit()
    sent, delivered, read = (only_status(w) for w in webhooks)
    assert sent["conversation"]["expiration_timestamp"].isdigit()
    assert sent["pricing"] == {"billable": False, "pricing_model": "PMP", "category": "service"}
    assert delivered["conversation"]["id"] == sent["conversation"]["id"]
    assert "conversation" not in read and "pricing" not in read


async def test_the_lifecycle_can_stop_at_delivered(start_sandbox: StartSandbox, receiver: WebhookReceiver) -> None:
    async with start_sandbox(statuses="delivered", **FAST) as sandbox:
        await customer_wrote(sandbox, receiver)
        first = (await sandbox.post(messages_url(), json=text_message(), headers=GRAPH_HEADERS)).json()
        first_statuses = [only_status(await receiver.next())["status"] for _ in range(2)]
        # A read of the first message would follow its delivered at once; the second message's
        # statuses come after it, so by then a read would have been received.
        second = (await sandbox.post(messages_url(), json=text_message(), headers=GRAPH_HEADERS)).json()
        later = [only_status(await receiver.next()) for _ in range(2)]

    assert first_statuses == ["sent", "delivered"]
    assert [(s["id"], s["status"]) for s in later] == [
        (second["messages"][0]["id"], "sent"),
        (second["messages"][0]["id"], "delivered"),
    ]
    assert first["messages"][0]["id"] != second["messages"][0]["id"]


async def test_a_failed_status_delivery_is_retried_and_the_sandbox_carries_on(
    start_sandbox: StartSandbox, receiver: WebhookReceiver
) -> None:
    retrying = {"webhook_attempts": 3, "webhook_retry_delay": 0.01}
    async with start_sandbox(statuses="sent", status_sent_delay=0, **retrying) as sandbox:
        await customer_wrote(sandbox, receiver)
        receiver.failures_to_answer = 2
        await sandbox.post(messages_url(), json=text_message(), headers=GRAPH_HEADERS)
        attempts = [await receiver.next() for _ in range(3)]
        health = await sandbox.get("/healthz")

    assert len({a.body for a in attempts}) == 1, "a retry sends the same notification"
    assert only_status(attempts[0])["status"] == "sent"
    assert health.status_code == 200


async def test_template_statuses_are_billable_and_callback_data_is_echoed(
    start_sandbox: StartSandbox, receiver: WebhookReceiver
) -> None:
    template = {
        "messaging_product": "whatsapp",
        "to": CUSTOMER,
        "type": "template",
        "template": {"name": "order_update", "language": {"code": "en_US"}},
        "biz_opaque_callback_data": "campaign-7",
    }
    async with start_sandbox(statuses="sent", status_sent_delay=0) as sandbox:
        await sandbox.post(messages_url(), json=template, headers=GRAPH_HEADERS)
        status = only_status(await receiver.next())

    assert status["pricing"]["billable"] is True
    assert status["pricing"]["category"] == "utility"
    assert status["biz_opaque_callback_data"] == "campaign-7"


async def test_webhook_bodies_escape_slashes_and_non_ascii_as_meta_does(
    start_sandbox: StartSandbox, receiver: WebhookReceiver
) -> None:
    async with start_sandbox() as sandbox:
        answer = await sandbox.post(
            "/sandbox/inbound",
            json={
                "object": "whatsapp_business_account",
                "entry": [
                    {
                        "id": "1",
                        "changes": [
                            {
                                "field": "messages",
                                "value": {"metadata": {"phone_number_id": NUMBER}, "note": "a/b café"},
                            }
                        ],
                    }
                ],
            },
        )
        webhook = await receiver.next()

    assert answer.status_code == 200, answer.text
    assert b"a\\/b caf\\u00e9" in webhook.body
    assert webhook.value["note"] == "a/b café"
    assert webhook.signed_with(APP_SECRET)
