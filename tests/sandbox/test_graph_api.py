"""The Graph API emulation: Meta's answers, errors, faults and the recordings tests rely on."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.sandbox.helpers import (
    CUSTOMER,
    GRAPH_HEADERS,
    NUMBER,
    TENANT,
    buttons_message,
    customer_writes,
    messages_url,
    running_sandbox,
    template_message,
    text_message,
)

OTHER_NUMBER = "200000000000001"
OTHER_TOKEN = "token-other"


def assert_meta_error(answer: httpx.Response, http_status: int, code: int) -> dict[str, Any]:
    assert answer.status_code == http_status, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert error["code"] == code
    assert error["type"] in ("OAuthException", "GraphMethodException")
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["fbtrace_id"], str) and error["fbtrace_id"]
    return error


async def register_other_number(sandbox: httpx.AsyncClient) -> None:
    answer = await sandbox.post(
        "/sandbox/numbers",
        json={"tenant": "other", "phone_number_id": OTHER_NUMBER, "access_token": OTHER_TOKEN, "app_secret": "s"},
    )
    assert answer.status_code == 201, answer.text


async def test_a_good_send_returns_a_wamid_and_is_recorded(sandbox: httpx.AsyncClient) -> None:
    await customer_writes(sandbox)
    answer = await sandbox.post(messages_url(), json=text_message(to="+55 11 98888-7777"), headers=GRAPH_HEADERS)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["messaging_product"] == "whatsapp"
    assert body["contacts"] == [{"input": "+55 11 98888-7777", "wa_id": CUSTOMER}]
    wamid = body["messages"][0]["id"]
    assert wamid.startswith("wamid.")

    recorded = (await sandbox.get("/sandbox/messages", params={"phone_number_id": NUMBER, "to": CUSTOMER})).json()
    [message] = recorded["messages"]
    assert (message["wamid"], message["to"], message["type"], message["tenant"]) == (wamid, CUSTOMER, "text", TENANT)
    assert message["payload"]["text"] == {"body": "hello"}
    assert message["timestamp"] > 0


async def test_every_wamid_is_unique(sandbox: httpx.AsyncClient) -> None:
    wamids = set()
    for i in range(20):
        # Templates to customers of their own: no window to open, no pair rate to meet.
        answer = await sandbox.post(
            messages_url(), json=template_message(to=f"55119000000{i:02d}"), headers=GRAPH_HEADERS
        )
        wamids.add(answer.json()["messages"][0]["id"])
    assert len(wamids) == 20


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(buttons_message("Yes", "No", "Maybe"), id="three-buttons"),
        pytest.param(
            {
                "messaging_product": "whatsapp",
                "to": CUSTOMER,
                "type": "interactive",
                "interactive": {
                    "type": "list",
                    "header": {"type": "text", "text": "Menu"},
                    "body": {"text": "What do you need?"},
                    "footer": {"text": "Acme"},
                    "action": {
                        "button": "Options",
                        "sections": [
                            {"title": "Orders", "rows": [{"id": "track", "title": "Track", "description": "Where?"}]},
                            {"title": "Help", "rows": [{"id": "human", "title": "Talk to a person"}]},
                        ],
                    },
                },
            },
            id="list",
        ),
        pytest.param(
            {
                "messaging_product": "whatsapp",
                "to": CUSTOMER,
                "type": "template",
                "template": {
                    "name": "order_update",
                    "language": {"code": "en_US"},
                    "components": [{"type": "body", "parameters": [{"type": "text", "text": "42"}]}],
                },
            },
            id="template",
        ),
        pytest.param(
            {
                "messaging_product": "whatsapp",
                "to": CUSTOMER,
                "type": "reaction",
                "reaction": {"message_id": "wamid.abc", "emoji": "\U0001f44d"},
            },
            id="reaction",
        ),
        pytest.param(
            {
                "messaging_product": "whatsapp",
                "to": CUSTOMER,
                "type": "image",
                "image": {"link": "https://example.com/a.png", "caption": "Look"},
            },
            id="image",
        ),
        pytest.param(text_message(context={"message_id": "wamid.quoted"}), id="reply-with-context"),
        pytest.param(
            {"messaging_product": "whatsapp", "to": CUSTOMER, "text": {"body": "no type"}}, id="type-defaults"
        ),
    ],
)
async def test_meta_shaped_payloads_are_accepted(shared_sandbox: httpx.AsyncClient, payload: dict[str, Any]) -> None:
    answer = await shared_sandbox.post(messages_url(), json=payload, headers=GRAPH_HEADERS)

    assert answer.status_code == 200, answer.text
    assert answer.json()["messages"][0]["id"].startswith("wamid.")


async def test_a_template_send_is_accepted_with_message_status(shared_sandbox: httpx.AsyncClient) -> None:
    payload = {
        "messaging_product": "whatsapp",
        "to": CUSTOMER,
        "type": "template",
        "template": {"name": "hello_world", "language": {"code": "en_US"}},
    }
    answer = await shared_sandbox.post(messages_url(), json=payload, headers=GRAPH_HEADERS)
    assert answer.json()["messages"][0]["message_status"] == "accepted"


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        pytest.param({}, "missing", id="missing"),
        pytest.param({"Authorization": "Bearer not-a-token"}, "unknown", id="unknown-token"),
        pytest.param({"Authorization": "Basic dG9rZW4tYWNtZQ=="}, "wrong scheme", id="wrong-scheme"),
        pytest.param({"Authorization": "Bearer"}, "no token", id="no-token"),
    ],
)
async def test_a_missing_or_bad_token_is_refused_like_meta(
    shared_sandbox: httpx.AsyncClient, headers: dict[str, str], why: str
) -> None:
    answer = await shared_sandbox.post(messages_url(), json=text_message(), headers=headers)

    error = assert_meta_error(answer, 401, 190)
    assert error["type"] == "OAuthException", why


async def test_an_unknown_number_gets_meta_unsupported_post_request(shared_sandbox: httpx.AsyncClient) -> None:
    answer = await shared_sandbox.post(messages_url("999999999"), json=text_message(), headers=GRAPH_HEADERS)

    error = assert_meta_error(answer, 400, 100)
    assert error["error_subcode"] == 33
    assert "999999999" in error["message"]


async def test_another_tenants_token_cannot_send_from_this_number(sandbox: httpx.AsyncClient) -> None:
    await register_other_number(sandbox)
    await customer_writes(sandbox, number=OTHER_NUMBER)

    answer = await sandbox.post(
        messages_url(NUMBER), json=text_message(), headers={"Authorization": f"Bearer {OTHER_TOKEN}"}
    )

    assert assert_meta_error(answer, 400, 100)["error_subcode"] == 33
    own = await sandbox.post(
        messages_url(OTHER_NUMBER), json=text_message(), headers={"Authorization": f"Bearer {OTHER_TOKEN}"}
    )
    assert own.status_code == 200, own.text


async def test_a_malformed_api_version_is_an_unknown_path(shared_sandbox: httpx.AsyncClient) -> None:
    answer = await shared_sandbox.post(messages_url(version="latest"), json=text_message(), headers=GRAPH_HEADERS)
    assert_meta_error(answer, 400, 2500)


def _with_interactive_action(action: dict[str, Any]) -> dict[str, Any]:
    payload = buttons_message("A")
    payload["interactive"]["action"] = action
    return payload


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        pytest.param({**text_message(), "messaging_product": "sms"}, "messaging_product", id="messaging-product"),
        pytest.param({"to": CUSTOMER, "type": "text", "text": {"body": "x"}}, "messaging_product", id="no-product"),
        pytest.param(buttons_message("A", "B", "C", "D"), "at most 3", id="four-buttons"),
        pytest.param(buttons_message("A" * 21), "at most 20 characters", id="title-too-long"),
        pytest.param(buttons_message("Same", "Same"), "unique", id="duplicate-buttons"),
        pytest.param({**text_message(), "type": "hologram"}, "type", id="unknown-type"),
        pytest.param({"messaging_product": "whatsapp", "type": "text", "text": {"body": "x"}}, "to", id="no-to"),
        pytest.param(text_message(to="not-a-number"), "phone number", id="bad-to"),
        pytest.param({**text_message(), "text": None}, "needs the text object", id="no-content"),
        pytest.param(
            {**text_message(), "image": {"link": "https://x.y/z.png"}}, "cannot carry image", id="two-contents"
        ),
        pytest.param(text_message(body=""), "text.body", id="empty-body"),
        pytest.param({**text_message(), "text": {"body": "x", "bodyy": "y"}}, "bodyy", id="misspelt-field"),
        pytest.param(
            {"messaging_product": "whatsapp", "to": CUSTOMER, "type": "image", "image": {"caption": "no media"}},
            "id or link",
            id="media-without-id-or-link",
        ),
        pytest.param(
            _with_interactive_action(
                {"button": "Menu", "sections": [{"rows": [{"id": f"r{i}", "title": "t"} for i in range(11)]}]}
            ),
            "buttons",  # a button message with a list's action
            id="list-action-on-buttons",
        ),
        pytest.param(
            {
                "messaging_product": "whatsapp",
                "to": CUSTOMER,
                "type": "interactive",
                "interactive": {
                    "type": "list",
                    "body": {"text": "x"},
                    "action": {
                        "button": "Menu",
                        "sections": [{"rows": [{"id": f"r{i}", "title": "t"} for i in range(11)]}],
                    },
                },
            },
            "at most 10",
            id="eleven-rows",
        ),
        pytest.param(
            {"messaging_product": "whatsapp", "to": CUSTOMER, "type": "template", "template": {"name": "x"}},
            "template.language",
            id="template-without-language",
        ),
        pytest.param(
            {"messaging_product": "whatsapp", "status": "read"},
            "message_id",
            id="read-without-message-id",
        ),
    ],
)
async def test_bad_payloads_get_meta_invalid_parameter(
    shared_sandbox: httpx.AsyncClient, payload: dict[str, Any], detail: str
) -> None:
    answer = await shared_sandbox.post(messages_url(), json=payload, headers=GRAPH_HEADERS)

    error = assert_meta_error(answer, 400, 100)
    assert error["message"] == "(#100) Invalid parameter"
    assert detail in error["error_data"]["details"]


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe"], ids=["broken", "array", "not-utf8"])
async def test_a_body_that_is_not_a_json_object_is_an_invalid_parameter(
    shared_sandbox: httpx.AsyncClient, body: bytes
) -> None:
    answer = await shared_sandbox.post(
        messages_url(), content=body, headers={**GRAPH_HEADERS, "Content-Type": "application/json"}
    )
    assert_meta_error(answer, 400, 100)


async def test_mark_as_read_with_typing_indicator_succeeds(sandbox: httpx.AsyncClient) -> None:
    payload = {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": "wamid.inbound",
        "typing_indicator": {"type": "text"},
    }
    answer = await sandbox.post(messages_url(), json=payload, headers=GRAPH_HEADERS)

    assert answer.status_code == 200, answer.text
    assert answer.json() == {"success": True}
    # A read receipt is a call, not a message.
    assert (await sandbox.get("/sandbox/messages")).json()["messages"] == []
    [attempt] = (await sandbox.get("/sandbox/attempts")).json()["attempts"]
    assert (attempt["http_status"], attempt["request"]) == (200, payload)


async def test_a_typing_indicator_of_an_unknown_type_is_refused(shared_sandbox: httpx.AsyncClient) -> None:
    payload = {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": "wamid.inbound",
        "typing_indicator": {"type": "audio"},
    }
    answer = await shared_sandbox.post(messages_url(), json=payload, headers=GRAPH_HEADERS)
    assert_meta_error(answer, 400, 100)


@pytest.mark.parametrize(
    ("fault", "http_status", "code", "message"),
    [
        ({"kind": "429"}, 429, 130429, "Rate limit hit"),
        ({"kind": "500"}, 500, 131000, "Something went wrong"),
        ({"kind": "131047"}, 400, 131047, "Re-engagement message"),
        ({"code": 131049}, 400, 131049, "healthy ecosystem engagement"),
        ({"code": 132007}, 400, 132007, "Policy Violated"),
        ({"code": 368}, 400, 368, "(#368)"),  # a code the sandbox has no words for
    ],
)
async def test_an_injected_fault_fails_the_next_sends_then_clears(
    sandbox: httpx.AsyncClient, fault: dict[str, Any], http_status: int, code: int, message: str
) -> None:
    await customer_writes(sandbox)
    injected = await sandbox.post("/sandbox/faults", json={**fault, "count": 2, "phone_number_id": NUMBER})
    assert injected.status_code == 201, injected.text
    assert injected.json()["faults"] == [{"code": code, "remaining": 2, "phone_number_id": NUMBER}]

    for _ in range(2):
        answer = await sandbox.post(messages_url(), json=text_message(), headers=GRAPH_HEADERS)
        error = assert_meta_error(answer, http_status, code)
        assert message in error["message"]
        assert error["error_data"]["details"]
    if code == 131047:
        assert "24 hours" in error["error_data"]["details"]

    after = await sandbox.post(messages_url(), json=text_message(), headers=GRAPH_HEADERS)
    assert after.status_code == 200, after.text
    assert (await sandbox.get("/sandbox/faults")).json()["faults"] == []


async def test_faults_apply_to_their_number_only_and_can_be_cleared(sandbox: httpx.AsyncClient) -> None:
    await register_other_number(sandbox)
    await customer_writes(sandbox)
    await customer_writes(sandbox, number=OTHER_NUMBER)
    await sandbox.post("/sandbox/faults", json={"kind": "500", "count": 5, "phone_number_id": OTHER_NUMBER})

    mine = await sandbox.post(messages_url(), json=text_message(), headers=GRAPH_HEADERS)
    other_headers = {"Authorization": f"Bearer {OTHER_TOKEN}"}
    theirs = await sandbox.post(messages_url(OTHER_NUMBER), json=text_message(), headers=other_headers)
    assert (mine.status_code, theirs.status_code) == (200, 500)

    cleared = await sandbox.delete("/sandbox/faults")
    assert cleared.status_code == 204
    again = await sandbox.post(messages_url(OTHER_NUMBER), json=text_message(), headers=other_headers)
    assert again.status_code == 200, again.text


async def test_a_fault_for_any_number_and_invalid_payloads_do_not_consume_it(sandbox: httpx.AsyncClient) -> None:
    await customer_writes(sandbox)
    await sandbox.post("/sandbox/faults", json={"kind": "429"})

    invalid = await sandbox.post(messages_url(), json=buttons_message("A", "B", "C", "D"), headers=GRAPH_HEADERS)
    read = await sandbox.post(
        messages_url(),
        json={"messaging_product": "whatsapp", "status": "read", "message_id": "w"},
        headers=GRAPH_HEADERS,
    )
    throttled = await sandbox.post(messages_url(), json=text_message(), headers=GRAPH_HEADERS)
    sent = await sandbox.post(messages_url(), json=text_message(), headers=GRAPH_HEADERS)

    assert [invalid.status_code, read.status_code, throttled.status_code, sent.status_code] == [400, 200, 429, 200]


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "404"},
        {},
        {"kind": "429", "code": 130429},
        {"code": 0},
        {"kind": "429", "count": 0},
        {"kind": "429", "phone_number_id": "abc"},
        {"kind": "429", "surprise": True},
    ],
)
async def test_a_bad_fault_request_is_a_clear_422(shared_sandbox: httpx.AsyncClient, fault: dict[str, Any]) -> None:
    answer = await shared_sandbox.post("/sandbox/faults", json=fault)
    assert answer.status_code == 422
    assert answer.json()["detail"]


async def test_a_fault_for_an_unknown_number_is_404(shared_sandbox: httpx.AsyncClient) -> None:
    answer = await shared_sandbox.post("/sandbox/faults", json={"kind": "429", "phone_number_id": "123"})
    assert answer.status_code == 404
    assert "123" in answer.json()["detail"]


async def test_attempts_record_refused_calls_and_recordings_reset(sandbox: httpx.AsyncClient) -> None:
    for customer in (CUSTOMER, "15550001111"):
        await customer_writes(sandbox, customer)
    await sandbox.post("/sandbox/faults", json={"kind": "500"})
    await sandbox.post(messages_url(), json=text_message(body="one"), headers=GRAPH_HEADERS)
    await sandbox.post(messages_url(), json=text_message(body="two"), headers=GRAPH_HEADERS)
    await sandbox.post(messages_url(), json=text_message(body="three"), headers={})
    await sandbox.post(messages_url(), json={**text_message(body="bad"), "type": "hologram"}, headers=GRAPH_HEADERS)
    await sandbox.post(messages_url(), json=text_message(to="15550001111", body="four"), headers=GRAPH_HEADERS)

    attempts = (await sandbox.get("/sandbox/attempts", params={"phone_number_id": NUMBER})).json()["attempts"]
    assert [(a["http_status"], a["request"]["text"]["body"]) for a in attempts] == [
        (500, "one"),
        (200, "two"),
        (401, "three"),
        (400, "bad"),
        (200, "four"),
    ]
    assert attempts[0]["response"]["error"]["code"] == 131000
    to_customer = (await sandbox.get("/sandbox/messages", params={"to": CUSTOMER})).json()["messages"]
    assert [m["payload"]["text"]["body"] for m in to_customer] == ["two"]
    everyone = (await sandbox.get("/sandbox/messages", params={"phone_number_id": NUMBER})).json()["messages"]
    assert len(everyone) == 2
    assert (await sandbox.get("/sandbox/attempts", params={"phone_number_id": "1"})).json()["attempts"] == []

    assert (await sandbox.delete("/sandbox/messages")).status_code == 204
    assert (await sandbox.get("/sandbox/messages")).json()["messages"] == []
    assert (await sandbox.get("/sandbox/attempts")).json()["attempts"] == []


async def test_recordings_are_bounded() -> None:
    async with running_sandbox(max_recorded=3) as sandbox:
        await customer_writes(sandbox)
        for i in range(5):
            await sandbox.post(messages_url(), json=text_message(body=str(i)), headers=GRAPH_HEADERS)

        messages = (await sandbox.get("/sandbox/messages")).json()["messages"]
        attempts = (await sandbox.get("/sandbox/attempts")).json()["attempts"]
    assert [m["payload"]["text"]["body"] for m in messages] == ["2", "3", "4"]
    assert len(attempts) == 3


async def test_a_body_over_the_limit_is_refused_with_413() -> None:
    async with running_sandbox(max_body_bytes=2048) as sandbox:
        answer = await sandbox.post(messages_url(), json=text_message(body="x" * 4000), headers=GRAPH_HEADERS)

        assert answer.status_code == 413
        assert "2048" in answer.json()["detail"]

        async def chunked() -> Any:  # no Content-Length: the limit must still hold
            for _ in range(10):
                yield b"x" * 1000

        streamed = await sandbox.post(
            "/sandbox/inbound", content=chunked(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413
        assert (await sandbox.get("/healthz")).json() == {"status": "ok"}
