"""WhatsApp's sending rules as the sandbox enforces them, with Meta's errors: the 24-hour window (131047),
the pair rate (131056), marketing opt-outs (131050) and registered templates (132000, 132001, 132015, 132016).

Time is the sandbox's own clock in the test's hands (`ManualClock`): nothing waits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.sandbox.helpers import (
    CUSTOMER,
    GRAPH_HEADERS,
    NOWHERE,
    NUMBER,
    ManualClock,
    buttons_message,
    component,
    customer_writes,
    messages_url,
    running_sandbox,
    template_message,
    text_message,
)
from tests.support.http import serve
from zapflow.platform.service import create_app
from zapflow.sandbox.app import sandbox_service
from zapflow.sandbox.settings import SandboxSettings

HOUR = 3600.0
OTHER_CUSTOMER = "5511977776666"
READ = {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.any"}
# One message of every free-form kind: none may go out unless the customer's window is open.
FREE_FORM = {
    "text": text_message(),
    "interactive": buttons_message("Yes", "No"),
    "image": {"messaging_product": "whatsapp", "to": CUSTOMER, "type": "image", "image": {"id": "media-1"}},
    "sticker": {"messaging_product": "whatsapp", "to": CUSTOMER, "type": "sticker", "sticker": {"id": "media-2"}},
    "reaction": {
        "messaging_product": "whatsapp",
        "to": CUSTOMER,
        "type": "reaction",
        "reaction": {"message_id": "wamid.x", "emoji": "\U0001f44d"},
    },
    "location": {
        "messaging_product": "whatsapp",
        "to": CUSTOMER,
        "type": "location",
        "location": {"latitude": -23.5, "longitude": -46.6},
    },
    "contacts": {
        "messaging_product": "whatsapp",
        "to": CUSTOMER,
        "type": "contacts",
        "contacts": [{"name": {"formatted_name": "Acme Support"}}],
    },
}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def sandbox(clock: ManualClock) -> AsyncIterator[httpx.AsyncClient]:
    """A sandbox on the test's clock, with a pair allowance no test of the window or templates reaches."""
    async with running_sandbox(clock, pair_burst=100) as client:
        yield client


def assert_meta_refusal(answer: httpx.Response, code: int, title: str) -> dict[str, Any]:
    """Meta's error shape, as the Graph API answers a send it refuses."""
    assert answer.status_code == 400, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert error["code"] == code
    assert error["type"] == "OAuthException"
    assert error["message"] == f"(#{code}) {title}"
    assert error["error_data"]["messaging_product"] == "whatsapp"
    assert isinstance(error["error_data"]["details"], str) and error["error_data"]["details"]
    assert isinstance(error["fbtrace_id"], str) and error["fbtrace_id"]
    return error


async def send(sandbox: httpx.AsyncClient, payload: dict[str, Any], number: str = NUMBER) -> httpx.Response:
    return await sandbox.post(messages_url(number), json=payload, headers=GRAPH_HEADERS)


async def customer(sandbox: httpx.AsyncClient, wa_id: str = CUSTOMER) -> dict[str, Any]:
    answer = await sandbox.get(f"/sandbox/numbers/{NUMBER}/customers/{wa_id}")
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()["customer"]
    return found


# --- the 24-hour window -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(FREE_FORM))
async def test_free_form_to_a_customer_who_never_wrote_is_a_re_engagement_error(
    sandbox: httpx.AsyncClient, kind: str
) -> None:
    error = assert_meta_refusal(await send(sandbox, FREE_FORM[kind]), 131047, "Re-engagement message")

    assert "24 hours" in error["error_data"]["details"]
    assert (await sandbox.get("/sandbox/messages")).json()["messages"] == []
    [attempt] = (await sandbox.get("/sandbox/attempts")).json()["attempts"]
    assert attempt["http_status"] == 400


async def test_the_window_check_can_be_turned_off_for_a_load_that_bypasses_the_sandbox(clock: ManualClock) -> None:
    async with running_sandbox(clock, enforce_window=False) as sandbox:
        answer = await send(sandbox, text_message(body="the benchmark's reply"))

    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("kind", sorted(FREE_FORM))
async def test_free_form_inside_the_window_is_accepted(sandbox: httpx.AsyncClient, kind: str) -> None:
    await customer_writes(sandbox)

    answer = await send(sandbox, FREE_FORM[kind])

    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(("hours_ago", "accepted"), [(25, False), (24.01, False), (23.99, True), (23, True)])
async def test_the_window_runs_from_the_messages_own_timestamp(
    sandbox: httpx.AsyncClient, clock: ManualClock, hours_ago: float, accepted: bool
) -> None:
    """A message Meta delivers late opens the window only for what is left of its 24 hours."""
    sent_at = int(clock.now - hours_ago * HOUR)
    written = await customer_writes(sandbox, timestamp=sent_at)

    answer = await send(sandbox, text_message())

    assert written.status_code == 502  # nowhere to deliver to: the customer wrote all the same
    assert (answer.status_code == 200) is accepted, answer.text
    state = await customer(sandbox)
    assert (state["last_message_at"], state["window_closes_at"]) == (sent_at, sent_at + 24 * HOUR)
    assert state["window_open"] is accepted


async def test_the_window_closes_24_hours_after_the_latest_message_and_a_late_older_one_does_not_shorten_it(
    sandbox: httpx.AsyncClient, clock: ManualClock
) -> None:
    await customer_writes(sandbox)
    clock.advance(20 * HOUR)
    await customer_writes(sandbox)
    # An older message delivered late changes nothing: the latest one counts.
    await customer_writes(sandbox, timestamp=int(clock.now - 22 * HOUR))

    clock.advance(23.9 * HOUR)
    assert (await send(sandbox, text_message(body="still open"))).status_code == 200
    clock.advance(0.2 * HOUR)
    assert_meta_refusal(await send(sandbox, text_message(body="closed")), 131047, "Re-engagement message")
    assert (await customer(sandbox))["window_open"] is False


async def test_a_template_or_a_read_receipt_needs_no_window(sandbox: httpx.AsyncClient, clock: ManualClock) -> None:
    never_wrote = await send(sandbox, template_message())
    await customer_writes(sandbox, OTHER_CUSTOMER, timestamp=int(clock.now - 30 * HOUR))
    wrote_long_ago = await send(sandbox, template_message(to=OTHER_CUSTOMER))
    read = await send(sandbox, READ)

    assert [never_wrote.status_code, wrote_long_ago.status_code, read.status_code] == [200, 200, 200]


async def test_the_window_belongs_to_one_number_and_one_customer(sandbox: httpx.AsyncClient) -> None:
    other_number = "200000000000009"
    registered = await sandbox.post(
        "/sandbox/numbers",
        json={"tenant": "other", "phone_number_id": other_number, "access_token": "token-other", "app_secret": "s"},
    )
    assert registered.status_code == 201, registered.text
    await customer_writes(sandbox, number=other_number)

    from_this_number = await send(sandbox, text_message())
    to_another_customer = await sandbox.post(
        messages_url(other_number),
        json=text_message(to=OTHER_CUSTOMER),
        headers={"Authorization": "Bearer token-other"},
    )

    assert_meta_refusal(from_this_number, 131047, "Re-engagement message")
    assert_meta_refusal(to_another_customer, 131047, "Re-engagement message")


def raw_customer_message(timestamp: str, sender: str = CUSTOMER) -> dict[str, Any]:
    message = {"from": sender, "id": "wamid.raw", "timestamp": timestamp, "type": "text", "text": {"body": "hi"}}
    value = {"metadata": {"phone_number_id": NUMBER}, "messages": [message]}
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
    }


async def test_a_raw_notification_opens_the_window_by_its_messages_timestamp(
    sandbox: httpx.AsyncClient, clock: ManualClock
) -> None:
    await sandbox.post("/sandbox/inbound", json=raw_customer_message(str(int(clock.now - 25 * HOUR))))
    too_old = await send(sandbox, text_message())
    await sandbox.post("/sandbox/inbound", json=raw_customer_message(str(int(clock.now - HOUR))))
    recent = await send(sandbox, text_message())

    assert_meta_refusal(too_old, 131047, "Re-engagement message")
    assert recent.status_code == 200, recent.text


@pytest.mark.parametrize("timestamp", ["in the future", "99999999999", "9" * 5000, "²"])
async def test_a_raw_message_from_the_future_or_without_a_timestamp_counts_as_sent_now(
    sandbox: httpx.AsyncClient, clock: ManualClock, timestamp: str
) -> None:
    if timestamp == "in the future":
        timestamp = str(int(clock.now + 10 * HOUR))
    await sandbox.post("/sandbox/inbound", json=raw_customer_message(timestamp))

    assert (await customer(sandbox))["last_message_at"] == clock.now
    clock.advance(24 * HOUR)
    assert_meta_refusal(await send(sandbox, text_message()), 131047, "Re-engagement message")


async def test_the_chat_api_refuses_a_message_from_the_future(sandbox: httpx.AsyncClient, clock: ManualClock) -> None:
    answer = await sandbox.post(
        "/sandbox/chat/send",
        json={"phone_number_id": NUMBER, "from": CUSTOMER, "text": "hi", "timestamp": int(clock.now) + 60},
    )

    assert answer.status_code == 400
    assert "future" in answer.json()["detail"]
    assert (await customer(sandbox))["last_message_at"] is None


# --- the pair rate ------------------------------------------------------------------------------------


async def test_the_pair_rate_allows_a_burst_then_refills_one_message_per_interval(clock: ManualClock) -> None:
    async with running_sandbox(clock, pair_burst=2, pair_refill_seconds=6) as sandbox:
        await customer_writes(sandbox)
        await customer_writes(sandbox, OTHER_CUSTOMER)
        burst = [(await send(sandbox, text_message(body=str(i)))).status_code for i in range(2)]
        error = assert_meta_refusal(
            await send(sandbox, text_message(body="too fast")),
            131056,
            "(Business Account, Consumer Account) pair rate limit hit",
        )
        # Another customer of the same number has an allowance of their own.
        other = await send(sandbox, text_message(to=OTHER_CUSTOMER))

        clock.advance(5.9)
        early = await send(sandbox, text_message(body="early"))
        clock.advance(0.1)
        refilled = await send(sandbox, text_message(body="refilled"))
        # A template counts as well: the allowance is spent again.
        template = await send(sandbox, template_message())

        clock.advance(60)  # the allowance refills up to the burst, no further
        after_a_pause = [(await send(sandbox, template_message())).status_code for _ in range(3)]

        sent = (await sandbox.get("/sandbox/messages", params={"to": CUSTOMER})).json()["messages"]

    assert burst == [200, 200]
    assert "too many messages" in error["error_data"]["details"]
    assert other.status_code == 200, other.text
    assert_meta_refusal(early, 131056, "(Business Account, Consumer Account) pair rate limit hit")
    assert refilled.status_code == 200, refilled.text
    assert_meta_refusal(template, 131056, "(Business Account, Consumer Account) pair rate limit hit")
    assert after_a_pause == [200, 200, 400]
    assert [m["payload"].get("text", {}).get("body") for m in sent] == ["0", "1", "refilled", None, None]


async def test_a_refused_send_spends_no_pair_allowance(clock: ManualClock) -> None:
    async with running_sandbox(clock, pair_burst=1) as sandbox:
        refused = [await send(sandbox, text_message()) for _ in range(3)]  # the window is closed
        await customer_writes(sandbox)
        sent = await send(sandbox, text_message())
        state = await customer(sandbox)

    assert {answer.json()["error"]["code"] for answer in refused} == {131047}
    assert sent.status_code == 200, sent.text
    assert state["pair_allowance"] == 0


# --- templates and marketing opt-outs ----------------------------------------------------------------


async def register(sandbox: httpx.AsyncClient, **template: Any) -> httpx.Response:
    return await sandbox.post(f"/sandbox/numbers/{NUMBER}/templates", json=template)


ORDER_UPDATE = {
    "name": "order_update",
    "language": "pt_BR",
    "category": "utility",
    "body": "Olá {{1}}, seu pedido {{2}} saiu para entrega. {{1}}, acompanhe pelo link.",
    "header_parameters": 1,
    "button_parameters": 1,
}
PROMOTION = {"name": "weekly_deals", "language": "pt_BR", "category": "marketing", "body": "Ofertas da semana!"}


def order_update(*components: dict[str, Any]) -> dict[str, Any]:
    return template_message("order_update", *components, language="pt_BR")


COMPLETE = (component("header", "Pedido"), component("body", "Maria", "42"), component("button", "track-42"))


@pytest.mark.parametrize(
    ("payload", "code", "title", "details"),
    [
        (
            template_message("order_updat", language="pt_BR"),
            132001,
            "Template name does not exist in the translation",
            "template name (order_updat) does not exist in pt_BR",
        ),
        (
            template_message("order_update", *COMPLETE, language="en_US"),
            132001,
            "Template name does not exist in the translation",
            "does not exist in en_US",
        ),
        (
            order_update(COMPLETE[0], component("body", "Maria"), COMPLETE[2]),
            132000,
            "Number of parameters does not match the expected number of params",
            "body: number of localizable_params (1) does not match the expected number of params (2)",
        ),
        (
            order_update(component("body", "Maria", "42"), COMPLETE[2]),
            132000,
            "Number of parameters does not match the expected number of params",
            "header: number of localizable_params (0)",
        ),
        (
            order_update(*COMPLETE[:2]),
            132000,
            "Number of parameters does not match the expected number of params",
            "button: number of localizable_params (0) does not match the expected number of params (1)",
        ),
    ],
    ids=["unknown-name", "unknown-language", "body-count", "no-header", "no-button"],
)
async def test_a_send_of_a_registered_template_is_checked_like_meta(
    sandbox: httpx.AsyncClient, payload: dict[str, Any], code: int, title: str, details: str
) -> None:
    assert (await register(sandbox, **ORDER_UPDATE)).status_code == 201

    error = assert_meta_refusal(await send(sandbox, payload), code, title)

    assert details in error["error_data"]["details"]
    assert (await send(sandbox, order_update(*COMPLETE))).status_code == 200


@pytest.mark.parametrize(
    ("status", "code", "title"),
    [("PAUSED", 132015, "Template is Paused"), ("DISABLED", 132016, "Template is Disabled")],
)
async def test_a_paused_or_disabled_template_is_refused_until_approved_again(
    sandbox: httpx.AsyncClient, status: str, code: int, title: str
) -> None:
    created = await register(sandbox, **ORDER_UPDATE, status=status)

    refused = await send(sandbox, order_update(*COMPLETE))
    replaced = await register(sandbox, **ORDER_UPDATE, status="APPROVED")
    accepted = await send(sandbox, order_update(*COMPLETE))

    assert (created.status_code, replaced.status_code) == (201, 200)
    assert_meta_refusal(refused, code, title)
    assert accepted.status_code == 200, accepted.text


async def test_without_registered_templates_any_template_is_accepted_and_forgetting_them_restores_that(
    sandbox: httpx.AsyncClient,
) -> None:
    anything = await send(sandbox, template_message("never_registered", component("body", "x")))
    await register(sandbox, **PROMOTION)
    listed = (await sandbox.get(f"/sandbox/numbers/{NUMBER}/templates")).json()["templates"]
    now_unknown = await send(sandbox, template_message("never_registered", component("body", "x")))
    forgotten = await sandbox.delete(f"/sandbox/numbers/{NUMBER}/templates")
    again = await send(sandbox, template_message("never_registered", component("body", "x")))

    assert anything.status_code == 200, anything.text
    assert [(t["name"], t["category"], t["status"], t["body_parameters"]) for t in listed] == [
        ("weekly_deals", "marketing", "APPROVED", 0)
    ]
    assert_meta_refusal(now_unknown, 132001, "Template name does not exist in the translation")
    assert forgotten.status_code == 204
    assert again.status_code == 200, again.text


async def test_a_customer_who_stopped_marketing_gets_no_marketing_template_until_they_resume(
    sandbox: httpx.AsyncClient,
) -> None:
    await register(sandbox, **PROMOTION)
    await register(sandbox, **ORDER_UPDATE)
    promotion = template_message("weekly_deals", language="pt_BR")

    stopped = await sandbox.patch(f"/sandbox/numbers/{NUMBER}/customers/{CUSTOMER}", json={"marketing_stopped": True})
    refused = await send(sandbox, promotion)
    utility = await send(sandbox, order_update(*COMPLETE))
    # Writing again does not resume marketing messages: only the customer's own button does.
    await customer_writes(sandbox)
    still_refused = await send(sandbox, promotion)
    free_text = await send(sandbox, text_message())
    resumed = await sandbox.patch(f"/sandbox/numbers/{NUMBER}/customers/{CUSTOMER}", json={"marketing_stopped": False})
    accepted = await send(sandbox, promotion)
    to_someone_else = await send(sandbox, template_message("weekly_deals", to=OTHER_CUSTOMER, language="pt_BR"))

    assert stopped.json()["customer"]["marketing_stopped"] is True
    error = assert_meta_refusal(
        refused,
        131050,
        "Unable to deliver the message. This recipient has chosen to stop receiving marketing messages on WhatsApp "
        "from your business.",
    )
    assert "marketing" in error["error_data"]["details"]
    assert utility.status_code == 200, utility.text
    assert still_refused.json()["error"]["code"] == 131050
    assert free_text.status_code == 200, free_text.text
    assert resumed.json()["customer"]["marketing_stopped"] is False
    assert (accepted.status_code, to_someone_else.status_code) == (200, 200)


async def test_a_test_can_say_when_the_customer_last_wrote_without_a_webhook(
    sandbox: httpx.AsyncClient, clock: ManualClock
) -> None:
    path = f"/sandbox/numbers/{NUMBER}/customers/{CUSTOMER}"
    opened = await sandbox.patch(path, json={"last_message_at": clock.now - HOUR})
    inside = await send(sandbox, text_message(body="inside"))
    # An earlier time closes the window: "they last wrote 25 hours ago".
    closed = await sandbox.patch(path, json={"last_message_at": clock.now - 25 * HOUR})
    outside = await send(sandbox, text_message(body="outside"))

    assert opened.json()["customer"]["window_open"] is True
    assert inside.status_code == 200, inside.text
    assert closed.json()["customer"]["window_open"] is False
    assert_meta_refusal(outside, 131047, "Re-engagement message")


async def test_the_customer_state_shows_what_the_rules_see(sandbox: httpx.AsyncClient, clock: ManualClock) -> None:
    before = await customer(sandbox)
    await customer_writes(sandbox, timestamp=int(clock.now) - 60)
    await send(sandbox, text_message())
    after = await customer(sandbox)

    assert before == {
        "phone_number_id": NUMBER,
        "wa_id": CUSTOMER,
        "last_message_at": None,
        "window_closes_at": None,
        "window_open": False,
        "marketing_stopped": False,
        "pair_allowance": 100,
    }
    assert after["last_message_at"] == int(clock.now) - 60
    assert after["window_open"] is True
    assert after["pair_allowance"] == 99


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/sandbox/numbers/999/templates", None, 404),
        ("POST", "/sandbox/numbers/999/templates", PROMOTION, 404),
        ("DELETE", "/sandbox/numbers/999/templates", None, 404),
        ("GET", f"/sandbox/numbers/999/customers/{CUSTOMER}", None, 404),
        ("PATCH", f"/sandbox/numbers/999/customers/{CUSTOMER}", {"marketing_stopped": True}, 404),
        ("GET", f"/sandbox/numbers/{NUMBER}/customers/not-a-number", None, 422),
        ("PATCH", f"/sandbox/numbers/{NUMBER}/customers/{CUSTOMER}", {"marketing_stopped": "maybe"}, 422),
        ("PATCH", f"/sandbox/numbers/{NUMBER}/customers/{CUSTOMER}", {"last_message_at": -1}, 422),
        ("PATCH", f"/sandbox/numbers/{NUMBER}/customers/{CUSTOMER}", {"last_message_at": 9e10}, 400),
        ("POST", f"/sandbox/numbers/{NUMBER}/templates", {**PROMOTION, "category": "spam"}, 422),
        ("POST", f"/sandbox/numbers/{NUMBER}/templates", {**PROMOTION, "status": "REJECTED"}, 422),
        ("POST", f"/sandbox/numbers/{NUMBER}/templates", {**PROMOTION, "name": "Weekly Deals"}, 422),
        ("POST", f"/sandbox/numbers/{NUMBER}/templates", {**PROMOTION, "body": "x" * 1025}, 422),
        ("POST", f"/sandbox/numbers/{NUMBER}/templates", {**PROMOTION, "header_parameters": 2}, 422),
        ("POST", f"/sandbox/numbers/{NUMBER}/templates", {**PROMOTION, "surprise": 1}, 422),
    ],
)
async def test_a_bad_rules_request_is_a_clear_4xx(
    sandbox: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None, status: int
) -> None:
    answer = await sandbox.request(method, path, json=body)

    assert answer.status_code == status
    assert answer.json()["detail"]


async def test_a_tenant_files_templates_are_registered_as_approved(tmp_path: Path) -> None:
    spec = {
        "whatsapp": {
            "phoneNumberId": "301",
            "appSecret": {"value": "secret"},
            "accessToken": {"value": "token"},
            "verifyToken": {"value": "verify"},
        },
        "handoff": {"templates": [{"name": "follow_up", "language": "pt_BR", "text": "Oi {{1}}, sobre {{2}}?"}]},
        "messaging": {"lateTemplate": {"name": "late_reply", "category": "marketing", "bodyParameters": ["{name}"]}},
    }
    tenant = tmp_path / "shop.yaml"
    tenant.write_text(
        yaml.safe_dump(
            {"apiVersion": "zapflow.io/v1alpha1", "kind": "BotTenant", "metadata": {"name": "shop"}, "spec": spec}
        )
    )
    settings = SandboxSettings(webhook_url=NOWHERE, statuses="off", tenant_files=[tenant])

    async with serve(create_app(sandbox_service(settings), settings)) as url, httpx.AsyncClient(base_url=url) as client:
        listed = (await client.get("/sandbox/numbers/301/templates")).json()["templates"]
        short = await client.post(
            messages_url("301"),
            json=template_message("follow_up", component("body", "Maria"), language="pt_BR"),
            headers={"Authorization": "Bearer token"},
        )

    assert [(t["name"], t["language"], t["category"], t["status"], t["body_parameters"]) for t in listed] == [
        ("follow_up", "pt_BR", "utility", "APPROVED", 2),
        ("late_reply", "en_US", "marketing", "APPROVED", 1),
    ]
    assert_meta_refusal(short, 132000, "Number of parameters does not match the expected number of params")


def test_pair_rate_settings_read_the_environment_and_refuse_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZAPFLOW_SANDBOX_PAIR_BURST", "3")
    monkeypatch.setenv("ZAPFLOW_SANDBOX_PAIR_REFILL_SECONDS", "0.5")

    assert (SandboxSettings().pair_burst, SandboxSettings().pair_refill_seconds) == (3, 0.5)
    for bad in ({"pair_burst": 0}, {"pair_refill_seconds": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SandboxSettings(**bad)  # type: ignore[arg-type]
