"""The whole platform in one event loop: sandbox, gateway and conversation on real servers (the
recorder and the embedding service when a test asks for them)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tests.support.http import bound_socket, serve
from tests.support.tenants import make_tenant, secret
from zapflow.conversation.app import conversation_service
from zapflow.conversation.responder import Responder
from zapflow.conversation.settings import ConversationSettings
from zapflow.gateway.app import GATEWAY
from zapflow.gateway.settings import GatewaySettings
from zapflow.handoff.app import HANDOFF
from zapflow.handoff.settings import HandoffSettings
from zapflow.knowledge.app import EMBEDDING
from zapflow.knowledge.messages import ErrorReply, SearchReply, SearchRequest
from zapflow.knowledge.settings import EmbeddingSettings
from zapflow.platform import catalogue
from zapflow.platform.service import create_app
from zapflow.platform.settings import CoreSettings
from zapflow.recorder.app import RECORDER
from zapflow.recorder.settings import RecorderSettings
from zapflow.sandbox.app import sandbox_service
from zapflow.sandbox.settings import SandboxSettings
from zapflow.scheduler.app import SCHEDULER
from zapflow.scheduler.settings import SchedulerSettings
from zapflow.tenants.model import BotTenant
from zapflow.tenants.registry import TenantRegistry

T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout: float = 15.0, what: str = "condition") -> T:
    """Wait for a probe of real state to return something, within a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        found = await probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Platform:
    sandbox: httpx.AsyncClient
    gateway: httpx.AsyncClient
    registry: TenantRegistry
    tenant: BotTenant
    # The handoff service's base URL, when the test asked for it (`handoff=`).
    handoff_url: str = ""

    @property
    def number(self) -> str:
        return self.tenant.spec.whatsapp.phone_number_id

    async def say(self, customer: str, text: str) -> str:
        """A customer writes through the sandbox's web chat API; returns the wamid."""
        answer = await self.sandbox.post(
            "/sandbox/chat/send", json={"phone_number_id": self.number, "from": customer, "text": text}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["gateway_status"] == 200, answer.json()
        return str(answer.json()["wamid"])

    async def deliver(self, payload: dict[str, Any]) -> httpx.Response:
        """Meta delivers a notification (tests/support/meta.py builds them): the sandbox signs it, posts it to
        the gateway and learns that its customers wrote. Returns the gateway's answer."""
        relayed = await self.sandbox.post("/sandbox/inbound", json=payload)
        assert relayed.status_code == 200, relayed.text
        return httpx.Response(relayed.json()["gateway_status"], text=relayed.json()["gateway_body"])

    async def customer_wrote(self, customer: str, seconds_ago: float = 60) -> None:
        """Meta learns the customer wrote, without a webhook: for tests that publish commands as if they had."""
        answer = await self.sandbox.patch(
            f"/sandbox/numbers/{self.number}/customers/{customer}", json={"last_message_at": time.time() - seconds_ago}
        )
        assert answer.status_code == 200, answer.text

    async def sent_to(self, customer: str) -> list[dict[str, Any]]:
        """Messages the Graph API accepted for this customer (read receipts are not messages)."""
        answer = await self.sandbox.get("/sandbox/messages", params={"phone_number_id": self.number, "to": customer})
        return list(answer.json()["messages"])

    async def texts_to(self, customer: str) -> list[str]:
        texts = []
        for message in await self.sent_to(customer):
            payload = message["payload"]
            if payload["type"] == "text":
                texts.append(payload["text"]["body"])
            elif payload["type"] == "interactive":
                texts.append(payload["interactive"]["body"]["text"])
            else:  # a template: its name stands for its words
                texts.append(f"[{payload['type']} {payload.get(payload['type'], {}).get('name', '')}]")
        return texts

    async def wait_for_texts(self, customer: str, count: int, timeout: float = 15.0) -> list[str]:
        async def enough() -> list[str] | None:
            texts = await self.texts_to(customer)
            return texts if len(texts) >= count else None

        return await eventually(enough, timeout, f"{count} messages to the customer")


async def register_number(sandbox: httpx.AsyncClient, tenant: BotTenant) -> None:
    """Tell the sandbox (Meta's stand-in) about the tenant's number and credentials."""
    registered = await sandbox.post(
        "/sandbox/numbers",
        json={
            "tenant": tenant.name,
            "phone_number_id": tenant.spec.whatsapp.phone_number_id,
            "access_token": secret(tenant, "access_token"),
            "app_secret": secret(tenant),
        },
    )
    assert registered.status_code == 201, registered.text


@dataclass
class KnowledgeStandIn:
    """Answers one tenant's knowledge searches with `reply`, as the embedding service would; keeps the requests."""

    reply: SearchReply | ErrorReply
    requests: list[SearchRequest]

    async def receive(self, msg: Msg) -> None:
        self.requests.append(SearchRequest.model_validate_json(msg.data))
        await msg.respond(self.reply.model_dump_json().encode())


@contextlib.asynccontextmanager
async def knowledge_stand_in(nc: NATS, tenant: str, reply: SearchReply | ErrorReply) -> AsyncIterator[KnowledgeStandIn]:
    stand_in = KnowledgeStandIn(reply, [])
    subscription: Subscription = await nc.subscribe(
        catalogue.knowledge_request_subject("search", tenant), cb=stand_in.receive
    )
    await nc.flush()  # subscribed on the server before the first request, from any connection
    try:
        yield stand_in
    finally:
        await subscription.unsubscribe()


@contextlib.asynccontextmanager
async def running_platform(
    core: CoreSettings,
    registry: TenantRegistry,
    messages_per_second: float = 80,
    debounce: dict[str, int] | None = None,
    responders: dict[str, Responder] | None = None,
    spec: dict[str, Any] | None = None,
    record: bool = False,
    embedding: dict[str, Any] | None = None,
    handoff: dict[str, Any] | None = None,
    scheduler: dict[str, Any] | None = None,
    **bot: Any,
) -> AsyncIterator[Platform]:
    """`embedding`, `handoff`, `scheduler`: run that service too, with these settings (`{}`: the defaults).

    The handoff service needs a migrated database (`core.database_url`) and records nothing itself:
    run it with `record=True` so that the recorder writes the messages its transcripts show.
    """
    # Bound before the sandbox starts, which needs the webhook's address.
    gateway_socket = bound_socket()
    gateway_port = gateway_socket.getsockname()[1]
    sandbox = SandboxSettings(webhook_url=f"http://127.0.0.1:{gateway_port}/webhook/whatsapp", statuses="delivered")
    async with serve(create_app(sandbox_service(sandbox), sandbox)) as sandbox_url:
        tenant = make_tenant(sandbox_url, messages_per_second, debounce, spec, **bot)
        await registry.put(tenant)
        async with httpx.AsyncClient(base_url=sandbox_url, timeout=10) as sandbox_client:
            await register_number(sandbox_client, tenant)
            gateway_settings = GatewaySettings(core=core, port=gateway_port)
            async with (
                serve(create_app(GATEWAY, gateway_settings), sock=gateway_socket) as gateway_url,
                serve(create_app(conversation_service(responders), ConversationSettings(core=core))),
                httpx.AsyncClient(base_url=gateway_url, timeout=10) as gateway_client,
                serve(create_app(RECORDER, RecorderSettings(core=core))) if record else contextlib.nullcontext(""),
                serve(create_app(EMBEDDING, EmbeddingSettings(core=core, **embedding)))
                if embedding is not None
                else contextlib.nullcontext(""),
                serve(create_app(HANDOFF, HandoffSettings(core=core, **handoff)))
                if handoff is not None
                else contextlib.nullcontext("") as handoff_url,
                serve(create_app(SCHEDULER, SchedulerSettings(core=core, **scheduler)))
                if scheduler is not None
                else contextlib.nullcontext(""),
            ):
                yield Platform(sandbox_client, gateway_client, registry, tenant, handoff_url)
