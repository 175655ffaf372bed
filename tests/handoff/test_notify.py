"""Notifications to agents on a real nats-server, POSTed to a real local receiver: signed, retried, dead-lettered."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.http import serve
from tests.support.platform import eventually
from tests.support.tenants import make_tenant
from zapflow.handoff.notify import DELIVERY_HEADER, SIGNATURE_HEADER, Notifier
from zapflow.platform import bus, catalogue
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.model import BotTenant
from zapflow.tenants.registry import TenantRegistry
from zapflow.v1 import handoff_pb2, turn_pb2

CUSTOMER = "5511955554444"
TEXT = "New conversation waiting (customer_asked): Ana +55…4444 http://127.0.0.1:8005/inbox/#/c/42"
SECRET = "notify-secret"
# The catalogue's attempts, a test's delays: all eight attempts take well under a second.
QUICK = (0.05,) * 7
# Long enough to change the tenant between two attempts, short enough to finish in seconds.
PATIENT = (0.5,) * 7
DELIVERED = 10.0


@dataclass(frozen=True)
class Post:
    headers: Headers
    body: bytes
    status: int


class Receiver:
    """An agent webhook that answers 500 to its first `failures` POSTs and 200 after; it records every POST."""

    def __init__(self, failures: float = 0) -> None:
        self.failures = failures
        self.posts: list[Post] = []
        self.delivered = asyncio.Event()

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            status = 500 if len(self.posts) < self.failures else 200
            self.posts.append(Post(request.headers, await request.body(), status))
            if status == 200:
                self.delivered.set()
            return Response(status_code=status)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


@asynccontextmanager
async def receiving(failures: float = 0) -> AsyncIterator[tuple[Receiver, str]]:
    """A receiver and its webhook URL."""
    receiver = Receiver(failures)
    async with serve(receiver.app()) as base_url:
        yield receiver, f"{base_url}/hook"


def tenant_notifying(url: str | None, events: Sequence[str] = ("requested", "timeout"), **notify: Any) -> BotTenant:
    """A tenant whose notifications go to `url` (None: a tenant without a notification webhook)."""
    spec = {"handoff": {"notify": {"url": url, "events": list(events), **notify}}} if url else {}
    return make_tenant(spec=spec)


@pytest.fixture
async def live(registry: TenantRegistry) -> AsyncIterator[TenantRegistry]:
    """The registry with its live view followed, as a service has it."""
    await registry.watch()
    yield registry
    await registry.stop()


async def registered(registry: TenantRegistry, *tenants: BotTenant) -> None:
    for tenant in tenants:
        await registry.put(tenant)

    async def all_seen() -> bool:
        return all(registry.by_name(tenant.name) is not None for tenant in tenants)

    await eventually(all_seen, what="the tenants in the registry's live view")


def consumer_of(tenant: BotTenant, backoff_s: tuple[float, ...]) -> catalogue.ConsumerSpec:
    """The notification consumer, with the test's delays, over this tenant's notifications only."""
    quick = replace(catalogue.HANDOFF_NOTIFY, backoff_s=backoff_s)
    return catalogue.shard_consumer(quick, tenant.name, (catalogue.events_of(catalogue.NOTIFY, tenant.name),))


@asynccontextmanager
async def notifying(
    js: JetStreamContext,
    registry: TenantRegistry,
    core: CoreSettings,
    tenants: Sequence[BotTenant],
    backoff_s: tuple[float, ...] = QUICK,
) -> AsyncIterator[list[catalogue.ConsumerSpec]]:
    """The Notifier behind a real consumer of each tenant's notifications, as the handoff service runs it."""
    await bus.ensure_streams(js, (catalogue.EVENTS, catalogue.DEAD_LETTER))
    specs = [consumer_of(tenant, backoff_s) for tenant in tenants]
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx.AsyncClient())
        notifier = Notifier(registry, http, core)
        for spec in specs:
            consumer = bus.Consumer(js, spec, handoff_pb2.AgentNotification, notifier.deliver, notifier.dead_lettered)
            await consumer.start()
            stack.push_async_callback(consumer.stop)
        yield specs


def notification(tenant: BotTenant, event: str = "requested") -> handoff_pb2.AgentNotification:
    return handoff_pb2.AgentNotification(
        notification_id=f"42:{event}:{uuid.uuid4().hex}",
        tenant=tenant.name,
        contact=CUSTOMER,
        handoff_id=42,
        event=event,
        text=TEXT,
        at=bus.now_timestamp(),
    )


async def publish(js: JetStreamContext, sent: handoff_pb2.AgentNotification) -> int:
    """Publish as the handoff desk does; the notification's stream sequence."""
    subject = catalogue.notification_subject(sent.tenant, sent.contact)
    return (await bus.publish(js, subject, sent, sent.notification_id)).seq


async def settled(js: JetStreamContext, spec: catalogue.ConsumerSpec, seq: int) -> None:
    """The consumer has acknowledged (or given up on) everything up to `seq`: nothing is left to redeliver."""

    async def done() -> bool:
        info = await js.consumer_info(spec.stream.name, spec.durable)
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        return floor >= seq and not info.num_ack_pending and not info.num_pending

    await eventually(done, what=f"{spec.durable} to settle message {seq}")


async def redelivered(js: JetStreamContext, spec: catalogue.ConsumerSpec) -> None:
    async def probe() -> bool:
        return bool((await js.consumer_info(spec.stream.name, spec.durable)).num_redelivered)

    await eventually(probe, what=f"{spec.durable} to redeliver")


def signed_with_secret(body: bytes) -> str:
    """The signature a receiver computes, independently of zapflow's code."""
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def counted(tenant: BotTenant, result: str) -> float:
    labels = {"tenant": tenant.name, "result": result}
    return REGISTRY.get_sample_value("zapflow_handoff_notifications_total", labels) or 0.0


async def test_the_body_is_slack_compatible_and_signed_with_the_tenant_secret(
    js: JetStreamContext, live: TenantRegistry, core: CoreSettings
) -> None:
    async with receiving() as (receiver, url):
        tenant = tenant_notifying(url, secret={"value": SECRET})
        await registered(live, tenant)
        async with notifying(js, live, core, [tenant]):
            sent = notification(tenant)
            await publish(js, sent)
            await asyncio.wait_for(receiver.delivered.wait(), DELIVERED)

    [post] = receiver.posts
    assert hmac.compare_digest(post.headers[SIGNATURE_HEADER], signed_with_secret(post.body))
    assert post.headers[DELIVERY_HEADER] == sent.notification_id
    assert post.headers["content-type"] == "application/json"
    assert json.loads(post.body) == {
        "text": TEXT,
        "zapflow": {
            "id": sent.notification_id,
            "tenant": tenant.name,
            "event": "requested",
            "handoff_id": 42,
            "agent": None,
            "at": sent.at.ToDatetime(tzinfo=UTC).isoformat(),
        },
    }
    assert CUSTOMER.encode() not in post.body


async def test_a_webhook_that_fails_five_times_and_then_succeeds_is_delivered_once(
    js: JetStreamContext, live: TenantRegistry, core: CoreSettings
) -> None:
    async with receiving(failures=5) as (receiver, url):
        tenant = tenant_notifying(url, secret={"value": SECRET})
        await registered(live, tenant)
        async with notifying(js, live, core, [tenant]) as [spec]:
            sent = notification(tenant)
            seq = await publish(js, sent)
            await asyncio.wait_for(receiver.delivered.wait(), DELIVERED)
            await settled(js, spec, seq)

    assert [post.status for post in receiver.posts] == [500] * 5 + [200]
    assert {post.headers[DELIVERY_HEADER] for post in receiver.posts} == {sent.notification_id}
    assert (counted(tenant, "delivered"), counted(tenant, "failed"), counted(tenant, "dead_lettered")) == (1, 5, 0)


async def test_a_webhook_that_always_fails_is_dead_lettered_and_not_tried_again(
    js: JetStreamContext, live: TenantRegistry, core: CoreSettings
) -> None:
    attempts = catalogue.HANDOFF_NOTIFY.max_attempts
    await bus.ensure_streams(js, (catalogue.DEAD_LETTER,))
    letters = await js.subscribe(
        catalogue.dead_letters_of(catalogue.HANDOFF_SERVICE), stream=catalogue.DEAD_LETTER.name
    )
    async with receiving(failures=math.inf) as (receiver, url):
        tenant = tenant_notifying(url)
        await registered(live, tenant)
        async with notifying(js, live, core, [tenant]) as [spec]:
            sent = notification(tenant)
            seq = await publish(js, sent)
            letter = turn_pb2.DeadLetter.FromString((await letters.next_msg(timeout=DELIVERED)).data)

            async def counted_once() -> bool:
                return counted(tenant, "dead_lettered") == 1

            await eventually(counted_once, what="the dead letter counted")
            await settled(js, spec, seq)
    await letters.unsubscribe()

    assert (letter.consumer, letter.message_id, letter.deliveries) == (spec.durable, sent.notification_id, attempts)
    assert letter.original_subject == catalogue.notification_subject(tenant.name, CUSTOMER)
    assert len(receiver.posts) == attempts
    assert (counted(tenant, "delivered"), counted(tenant, "failed")) == (0, attempts)


async def test_events_a_tenant_does_not_want_are_acknowledged_without_a_post(
    js: JetStreamContext, live: TenantRegistry, core: CoreSettings
) -> None:
    async with receiving() as (receiver, url):
        only_requests = tenant_notifying(url, events=["requested"])
        without_webhook = tenant_notifying(None)
        await registered(live, only_requests, without_webhook)
        async with notifying(js, live, core, [only_requests, without_webhook]) as specs:
            unwanted = await publish(js, notification(only_requests, "resolved"))
            unconfigured = await publish(js, notification(without_webhook, "requested"))
            await settled(js, specs[0], unwanted)
            await settled(js, specs[1], unconfigured)
            infos = [await js.consumer_info(spec.stream.name, spec.durable) for spec in specs]

    assert receiver.posts == []
    assert [info.delivered.consumer_seq for info in infos if info.delivered] == [1, 1]  # once each, never again
    for tenant in (only_requests, without_webhook):
        assert [counted(tenant, result) for result in ("delivered", "failed", "dead_lettered")] == [0, 0, 0]


async def test_a_tenant_not_in_the_registry_yet_is_retried_until_it_is(
    js: JetStreamContext, live: TenantRegistry, core: CoreSettings
) -> None:
    async with receiving() as (receiver, url):
        tenant = tenant_notifying(url)
        async with notifying(js, live, core, [tenant], backoff_s=PATIENT) as [spec]:
            await publish(js, notification(tenant))
            await redelivered(js, spec)
            assert receiver.posts == []
            await registered(live, tenant)
            await asyncio.wait_for(receiver.delivered.wait(), DELIVERED)

    [post] = receiver.posts
    assert SIGNATURE_HEADER not in post.headers  # no secret: unsigned


async def test_a_secret_that_cannot_be_read_is_retried_until_it_can(
    js: JetStreamContext, live: TenantRegistry, core: CoreSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    variable = f"ZAPFLOW_TEST_NOTIFY_SECRET_{uuid.uuid4().hex.upper()}"
    async with receiving() as (receiver, url):
        tenant = tenant_notifying(url, secret={"env": variable})
        await registered(live, tenant)
        async with notifying(js, live, core, [tenant], backoff_s=PATIENT) as [spec]:
            await publish(js, notification(tenant))
            await redelivered(js, spec)
            assert receiver.posts == []
            monkeypatch.setenv(variable, SECRET)
            await asyncio.wait_for(receiver.delivered.wait(), DELIVERED)

    [post] = receiver.posts
    assert post.headers[SIGNATURE_HEADER] == signed_with_secret(post.body)
    assert counted(tenant, "failed") == 0  # nothing was sent while the secret was missing
