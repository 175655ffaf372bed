"""The sandbox service: `sandbox_service(settings)` declares it for the platform's service factory."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

import httpx
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zapflow.platform.connections import NOTHING, Connections
from zapflow.platform.logging import get_logger
from zapflow.platform.service import Service
from zapflow.sandbox.api import SandboxServices, describe_graph_api_models, routers
from zapflow.sandbox.chat import ChatHub
from zapflow.sandbox.delivery import BackgroundTasks, StatusLifecycle, WebhookDelivery
from zapflow.sandbox.graph import GraphEmulator
from zapflow.sandbox.inbound import InboundRelay
from zapflow.sandbox.numbers import NumberDirectory, load_tenants, number_from_tenant
from zapflow.sandbox.recording import FaultPlan, Recorder
from zapflow.sandbox.rules import Clock, SendingRules, templates_from_tenant
from zapflow.sandbox.settings import SandboxSettings

log = get_logger(__name__)


class BodySizeLimit:
    """Refuses request bodies over the limit with 413 before any route reads them.

    The body is read here, up to the limit, and replayed to the app: every route of the
    sandbox takes a small JSON body, so buffering costs nothing and covers chunked uploads
    that carry no Content-Length.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self._app = app
        self._max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self._max_bytes):
            await self._refuse(send, 413 if declared.isdigit() else 400)
            return
        chunks: list[bytes] = []
        size = 0
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_bytes:
                await self._refuse(send, 413)
                return
            chunks.append(chunk)
            more_body = message.get("more_body", False)

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            # Afterwards the app only listens for the disconnect (the chat's event stream does).
            return await receive()

        await self._app(scope, replay, send)

    async def _refuse(self, send: Send, status: int) -> None:
        reason = (
            f"request body larger than {self._max_bytes} bytes" if status == 413 else "invalid Content-Length header"
        )
        body = json.dumps({"detail": reason}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def sandbox_service(settings: SandboxSettings, clock: Clock = time.time) -> Service[SandboxSettings, SandboxServices]:
    """The sandbox; the tenant files are read now, so mistakes surface at once.

    `clock` (Unix seconds) is what WhatsApp's rules measure time with: the window and the pair
    rate; tests give their own instead of waiting. A tenant file's number also gets the templates
    the file names, as approved. Raises TenantError or SecretUnavailable for a tenant file that
    cannot be used, and NumberConflict when two tenants claim one phone number id.
    """
    numbers = NumberDirectory()
    rules = SendingRules(
        pair_burst=settings.pair_burst,
        pair_refill_seconds=settings.pair_refill_seconds,
        clock=clock,
        enforce_window=settings.enforce_window,
    )
    for tenant in load_tenants(settings.tenant_files):
        number = number_from_tenant(tenant, settings.core.secrets_dir)
        numbers.register(number)
        rules.register_templates(number.phone_number_id, templates_from_tenant(tenant))
    chat_page = resources.files("zapflow.sandbox").joinpath("chat.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def build(settings: SandboxSettings, _: Connections) -> AsyncIterator[SandboxServices]:
        # The HTTP client belongs to the running loop, so it and its users are built here.
        async with httpx.AsyncClient(timeout=settings.webhook_timeout) as client:
            delivery = WebhookDelivery(
                client, settings.webhook_url, settings.webhook_attempts, settings.webhook_retry_delay
            )
            tasks = BackgroundTasks()
            recorder = Recorder(settings.max_recorded)
            hub = ChatHub()
            faults = FaultPlan()
            services = SandboxServices(
                numbers=numbers,
                recorder=recorder,
                faults=faults,
                rules=rules,
                hub=hub,
                graph=GraphEmulator(
                    numbers=numbers,
                    recorder=recorder,
                    faults=faults,
                    rules=rules,
                    hub=hub,
                    statuses=StatusLifecycle(delivery, tasks, settings),
                    debug=settings.core.debug,
                ),
                relay=InboundRelay(recorder, rules, delivery),
                chat_page=chat_page,
            )
            log.info("sandbox ready", numbers=len(numbers.all()), webhook_url=settings.webhook_url)
            try:
                yield services
            finally:
                await tasks.close()

    return Service(
        name="sandbox",
        summary="A local stand-in for the WhatsApp Cloud API, with a web chat.",
        # The sandbox plays Meta: it connects to nothing of zapflow's.
        needs=NOTHING,
        build=build,
        routers=lambda _: routers,
        customise=_customise,
    )


def _customise(app: FastAPI, settings: SandboxSettings) -> None:
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    describe_graph_api_models(app)
