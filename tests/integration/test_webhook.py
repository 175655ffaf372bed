"""The gateway's webhook against a real nats-server: verification, signatures, publishing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from nats.js import JetStreamContext

from tests.support import meta
from tests.support.http import serve
from tests.support.platform import eventually
from tests.support.servers import ManagedServer
from tests.support.tenants import make_tenant, secret
from zapflow.gateway.app import GATEWAY
from zapflow.gateway.settings import GatewaySettings
from zapflow.platform import catalogue
from zapflow.platform.service import create_app
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.model import BotTenant
from zapflow.tenants.registry import TenantRegistry
from zapflow.v1 import inbound_pb2

CUSTOMER = "5511988887777"


@pytest.fixture
async def tenants(registry: TenantRegistry) -> list[BotTenant]:
    created = [make_tenant(), make_tenant()]
    for tenant in created:
        await registry.put(tenant)
    return created


@pytest.fixture
async def gateway(core: CoreSettings, tenants: list[BotTenant]) -> AsyncIterator[httpx.AsyncClient]:
    settings = GatewaySettings(core=core, max_body_bytes=64 * 1024, publish_timeout_s=1.0)
    async with serve(create_app(GATEWAY, settings)) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield client


async def stored(js: JetStreamContext, stream: str = catalogue.INBOUND.name) -> int:
    info = await js.stream_info(stream)
    return int(info.state.messages)


async def post(client: httpx.AsyncClient, payload: dict[str, object], app_secret: str) -> httpx.Response:
    body, headers = meta.signed(payload, app_secret)
    return await client.post("/webhook/whatsapp", content=body, headers=headers)


async def test_verification_handshake_uses_each_tenants_verify_token(
    gateway: httpx.AsyncClient, tenants: list[BotTenant]
) -> None:
    for tenant in tenants:
        params = {"hub.mode": "subscribe", "hub.verify_token": secret(tenant, "verify_token"), "hub.challenge": "42"}
        answer = await gateway.get("/webhook/whatsapp", params=params)
        assert (answer.status_code, answer.text) == (200, "42")
    wrong = {"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "42"}
    assert (await gateway.get("/webhook/whatsapp", params=wrong)).status_code == 403
    assert (await gateway.get("/webhook/whatsapp", params={"hub.mode": "subscribe"})).status_code == 400


async def test_signed_message_is_published_with_its_wamid_as_dedup_id(
    gateway: httpx.AsyncClient, tenants: list[BotTenant], js: JetStreamContext
) -> None:
    tenant = tenants[0]
    message = meta.text(CUSTOMER, "hello")
    payload = meta.notification(tenant.spec.whatsapp.phone_number_id, [message], contacts=[meta.contact(CUSTOMER)])

    answer = await post(gateway, payload, secret(tenant))

    assert answer.status_code == 200, answer.text
    stored_message = await js.get_last_msg(catalogue.INBOUND.name, catalogue.inbound_subject(tenant.name, CUSTOMER))
    assert stored_message.headers is not None
    assert stored_message.headers["Nats-Msg-Id"] == message["id"]
    event = inbound_pb2.InboundMessage.FromString(stored_message.data)
    assert (event.tenant, event.contact, event.text.body) == (tenant.name, CUSTOMER, "hello")
    assert event.received_at.seconds > 0


async def test_statuses_are_published_with_wamid_and_status_as_dedup_id(
    gateway: httpx.AsyncClient, tenants: list[BotTenant], js: JetStreamContext
) -> None:
    tenant = tenants[0]
    number = tenant.spec.whatsapp.phone_number_id
    statuses = [meta.status(CUSTOMER, "wamid.S1", "sent"), meta.status(CUSTOMER, "wamid.S1", "delivered")]
    assert (await post(gateway, meta.notification(number, statuses=statuses), secret(tenant))).status_code == 200
    assert await stored(js, catalogue.STATUS.name) == 2
    last = await js.get_last_msg(catalogue.STATUS.name, catalogue.status_subject(tenant.name, CUSTOMER))
    assert last.headers is not None
    assert last.headers["Nats-Msg-Id"] == "wamid.S1:delivered"


async def test_the_same_payload_three_times_is_stored_once(
    gateway: httpx.AsyncClient, tenants: list[BotTenant], js: JetStreamContext
) -> None:
    tenant = tenants[0]
    payload = meta.notification(tenant.spec.whatsapp.phone_number_id, [meta.text(CUSTOMER, "once")])
    for _ in range(3):
        assert (await post(gateway, payload, secret(tenant))).status_code == 200
    assert await stored(js) == 1


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-Hub-Signature-256": "sha256=" + "0" * 64}, 403),
        ({"X-Hub-Signature-256": "md5=abc"}, 403),
    ],
)
async def test_missing_or_wrong_signature_is_refused_and_nothing_is_published(
    gateway: httpx.AsyncClient, tenants: list[BotTenant], js: JetStreamContext, headers: dict[str, str], status: int
) -> None:
    payload = meta.notification(tenants[0].spec.whatsapp.phone_number_id, [meta.text(CUSTOMER, "x")])
    answer = await gateway.post("/webhook/whatsapp", content=json.dumps(payload).encode(), headers=headers)
    assert answer.status_code == status
    assert "detail" in answer.json()
    assert await stored(js) == 0


async def test_payload_signed_with_another_tenants_secret_is_refused(
    gateway: httpx.AsyncClient, tenants: list[BotTenant], js: JetStreamContext
) -> None:
    victim, attacker = tenants
    payload = meta.notification(victim.spec.whatsapp.phone_number_id, [meta.text(CUSTOMER, "x")])
    assert (await post(gateway, payload, secret(attacker))).status_code == 403
    # Smuggling the victim's number next to the attacker's own, under the attacker's signature:
    mixed = meta.notification(attacker.spec.whatsapp.phone_number_id, [meta.text(CUSTOMER, "y")])
    mixed["entry"] += meta.notification(victim.spec.whatsapp.phone_number_id, [meta.text(CUSTOMER, "z")])["entry"]
    assert (await post(gateway, mixed, secret(attacker))).status_code == 403
    assert await stored(js) == 0


async def test_unknown_number_is_refused(gateway: httpx.AsyncClient, js: JetStreamContext) -> None:
    answer = await post(gateway, meta.notification("999999", [meta.text(CUSTOMER, "x")]), "whatever")
    assert answer.status_code == 403
    assert "phone_number_id" in answer.json()["detail"]


async def test_malformed_bodies_get_a_reason_not_a_500(gateway: httpx.AsyncClient, tenants: list[BotTenant]) -> None:
    tenant = tenants[0]
    number = tenant.spec.whatsapp.phone_number_id
    from zapflow.whatsapp.signature import sign

    broken = b'{"object":"whatsapp_business_account","phone_number_id":"' + number.encode() + b'", '
    answer = await gateway.post(
        "/webhook/whatsapp", content=broken, headers={"X-Hub-Signature-256": sign(broken, secret(tenant))}
    )
    assert answer.status_code == 400
    assert "not JSON" in answer.json()["detail"]

    odd = meta.notification(number, [{"id": "wamid.1", "type": "text"}])
    answer = await post(gateway, odd, secret(tenant))
    assert answer.status_code == 400
    assert "from is missing" in answer.json()["detail"]


async def test_oversized_body_is_refused_with_413(gateway: httpx.AsyncClient, tenants: list[BotTenant]) -> None:
    tenant = tenants[0]
    payload = meta.notification(tenant.spec.whatsapp.phone_number_id, [meta.text(CUSTOMER, "x" * 70_000)])
    assert (await post(gateway, payload, secret(tenant))).status_code == 413


async def test_jetstream_down_gives_503_and_metas_retry_is_accepted_once_it_is_back(
    gateway: httpx.AsyncClient, tenants: list[BotTenant], nats: ManagedServer
) -> None:
    tenant = tenants[0]
    message = meta.text(CUSTOMER, "during the outage")
    payload = meta.notification(tenant.spec.whatsapp.phone_number_id, [message])

    nats.kill()
    down = await post(gateway, payload, secret(tenant))
    assert down.status_code == 503
    assert "event bus unavailable" in down.json()["detail"]

    nats.start()  # same port, same JetStream directory
    async with httpx.AsyncClient(base_url=str(gateway.base_url)) as probe:

        async def ready() -> httpx.Response | None:
            response = await probe.get("/readyz")
            return response if response.status_code == 200 else None

        await eventually(ready, timeout=10, what="/readyz after the NATS client reconnected")
    retry = await post(gateway, payload, secret(tenant))
    assert retry.status_code == 200, retry.text


async def test_metrics_count_inbound_messages_and_signature_failures(
    gateway: httpx.AsyncClient, tenants: list[BotTenant]
) -> None:
    tenant = tenants[0]
    payload = meta.notification(tenant.spec.whatsapp.phone_number_id, [meta.text(CUSTOMER, "count me")])
    assert (await post(gateway, payload, secret(tenant))).status_code == 200
    assert (await post(gateway, payload, "wrong secret")).status_code == 403

    exposition = (await gateway.get("/metrics")).text
    assert f'zapflow_gateway_inbound_messages_total{{tenant="{tenant.name}",type="text"}} 1.0' in exposition
    assert f'zapflow_gateway_signature_failures_total{{tenant="{tenant.name}"}} 1.0' in exposition
    assert CUSTOMER not in exposition


async def test_metrics_can_require_a_bearer_token(core: CoreSettings, tenants: list[BotTenant]) -> None:
    from pydantic import SecretStr

    settings = GatewaySettings(core=core.model_copy(update={"metrics_token": SecretStr("scrape-me")}))
    async with serve(create_app(GATEWAY, settings)) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers={"Authorization": "Bearer nope"})).status_code == 401
        assert (await client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})).status_code == 200


async def test_readiness_reports_each_dependency(gateway: httpx.AsyncClient, redis: ManagedServer) -> None:
    ready = await gateway.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"nats": True, "redis": True, "tenants": True, "consumers": True}
    redis.kill()
    not_ready = await gateway.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"]["redis"] is False
    redis.start()
