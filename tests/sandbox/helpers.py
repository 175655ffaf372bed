"""What the sandbox tests share: a webhook receiver standing in for the gateway, an SSE reader, a clock."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response

from tests.support.http import serve
from zapflow.platform.service import create_app
from zapflow.sandbox.app import sandbox_service
from zapflow.sandbox.rules import Clock
from zapflow.sandbox.settings import SandboxSettings
from zapflow.whatsapp.signature import SIGNATURE_HEADER, signature_matches

NUMBER = "106540352242922"
TENANT = "acme"
TOKEN = "token-acme"
APP_SECRET = "app-secret-acme"
CUSTOMER = "5511988887777"
GRAPH_HEADERS = {"Authorization": f"Bearer {TOKEN}"}
WAIT_S = 10.0


def messages_url(number: str = NUMBER, version: str = "v21.0") -> str:
    return f"/{version}/{number}/messages"


def text_message(to: str = CUSTOMER, body: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": body}, **extra}


def template_message(
    name: str = "hello_world", *components: dict[str, Any], to: str = CUSTOMER, language: str = "en_US"
) -> dict[str, Any]:
    template: dict[str, Any] = {"name": name, "language": {"code": language}}
    if components:
        template["components"] = list(components)
    return {"messaging_product": "whatsapp", "to": to, "type": "template", "template": template}


def component(kind: str, *values: str) -> dict[str, Any]:
    """A template component (header, body or button) with these text parameters."""
    found: dict[str, Any] = {"type": kind, "parameters": [{"type": "text", "text": value} for value in values]}
    if kind == "button":
        found |= {"sub_type": "quick_reply", "index": "0"}
        found["parameters"] = [{"type": "payload", "payload": value} for value in values]
    return found


def buttons_message(*titles: str, to: str = CUSTOMER, body: str = "Pick one") -> dict[str, Any]:
    buttons = [{"type": "reply", "reply": {"id": f"b{i}", "title": title}} for i, title in enumerate(titles)]
    return {
        "messaging_product": "whatsapp",
        "to": to,
        "type": "interactive",
        "interactive": {"type": "button", "body": {"text": body}, "action": {"buttons": buttons}},
    }


@dataclass(frozen=True)
class ReceivedWebhook:
    body: bytes
    signature: str | None

    @property
    def payload(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.body)
        return found

    @property
    def value(self) -> dict[str, Any]:
        value: dict[str, Any] = self.payload["entry"][0]["changes"][0]["value"]
        return value

    def signed_with(self, app_secret: str) -> bool:
        return signature_matches(self.body, self.signature, app_secret)


class WebhookReceiver:
    """The gateway's place: records every webhook; can answer errors for the first N requests."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[ReceivedWebhook] = asyncio.Queue()
        self.failures_to_answer = 0
        self.failure_status = 503
        self.url = ""  # set once it is served
        self.app = FastAPI()
        self.app.add_api_route("/webhook/whatsapp", self._receive, methods=["POST"])

    async def _receive(self, request: Request) -> Response:
        await self.received.put(ReceivedWebhook(await request.body(), request.headers.get(SIGNATURE_HEADER)))
        if self.failures_to_answer > 0:
            self.failures_to_answer -= 1
            return Response(status_code=self.failure_status)
        return Response(status_code=200)

    async def next(self, timeout: float = WAIT_S) -> ReceivedWebhook:
        async with asyncio.timeout(timeout):
            return await self.received.get()


class EventStream:
    """Reads server-sent events from an open streaming response."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def next(self, timeout: float = WAIT_S) -> tuple[str, dict[str, Any]]:
        async with asyncio.timeout(timeout):
            event, data = "message", []
            async for line in self._lines:
                if line.startswith(":"):  # keep-alive comment
                    continue
                if line == "":
                    if data:
                        return event, json.loads("\n".join(data))
                    event = "message"
                    continue
                field, _, content = line.partition(":")
                if field == "event":
                    event = content.removeprefix(" ")
                elif field == "data":
                    data.append(content.removeprefix(" "))
            raise AssertionError("the event stream ended")


@contextlib.asynccontextmanager
async def open_chat_events(
    client: httpx.AsyncClient, contact: str = CUSTOMER, number: str = NUMBER
) -> AsyncIterator[EventStream]:
    """An open chat feed, once the sandbox said it is subscribed ("ready")."""
    params = {"phone_number_id": number, "contact": contact}
    async with client.stream("GET", "/sandbox/chat/events", params=params) as response:
        assert response.status_code == 200, await response.aread()
        stream = EventStream(response)
        kind, _ = await stream.next()
        assert kind == "ready"
        yield stream


StartSandbox = Callable[..., contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]


class ManualClock:
    """The sandbox's clock in a test's hands: time moves only when the test says so."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def customer_writes(
    client: httpx.AsyncClient, customer: str = CUSTOMER, number: str = NUMBER, **fields: Any
) -> httpx.Response:
    """The customer writes to the number, which opens their 24-hour window.

    Whether or not a gateway takes the webhook (a sandbox delivering nowhere answers 502): Meta
    knows the customer wrote either way.
    """
    answer = await client.post(
        "/sandbox/chat/send", json={"phone_number_id": number, "from": customer, "text": "hi", **fields}
    )
    assert answer.status_code in (200, 502), answer.text
    return answer


# For sandboxes that must not deliver anything: nothing listens on the discard port.
NOWHERE = "http://127.0.0.1:9/webhook/whatsapp"


@contextlib.asynccontextmanager
async def running_sandbox(clock: Clock = time.time, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A served sandbox with the test number registered, and a client for it."""
    sandbox = SandboxSettings(**{"webhook_url": NOWHERE, "statuses": "off", **settings})
    async with (
        serve(create_app(sandbox_service(sandbox, clock), sandbox)) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        registered = await client.post(
            "/sandbox/numbers",
            json={
                "tenant": TENANT,
                "phone_number_id": NUMBER,
                "access_token": TOKEN,
                "app_secret": APP_SECRET,
                "display_name": "Acme Store",
            },
        )
        assert registered.status_code == 201, registered.text
        yield client
