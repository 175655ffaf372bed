"""The gateway's webhook against a real nats-server: verification, signatures, publishing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

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
from zapflow.v1 import inbound_pb2, turn_pb2
from zapflow.whatsapp.signature import SIGNATURE_HEADER, sign

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


async def dead_letters(js: JetStreamContext) -> list[tuple[str, turn_pb2.DeadLetter]]:
    """Every dead letter with its subject, oldest first."""
    count = await stored(js, catalogue.DEAD_LETTER.name)
    found = [await js.get_msg(catalogue.DEAD_LETTER.name, seq) for seq in range(1, count + 1)]
    return [(m.subject, turn_pb2.DeadLetter.FromString(m.data or b"")) for m in found]


def _naming(number: str, document: object) -> bytes:
    """A body that names the tenant's number (so that its app secret is tried) whatever else it holds."""
    return json.dumps({"metadata": {"phone_number_id": number}, "rest": document}).encode()


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda number: _naming(number, 1)[:-3], "body is not JSON"),
        (lambda number: _naming(number, json.loads("[" * 40 + "]" * 40)), "nest deeper than 32 levels"),
        (lambda number: _naming(number, "ok"), "object: Field required"),
        (lambda number: _naming(number, [1] * 6_000), "more than 5000 items"),
    ],
)
async def test_a_signed_body_that_cannot_be_read_is_dead_lettered_whole_and_not_retried(
    gateway: httpx.AsyncClient,
    tenants: list[BotTenant],
    js: JetStreamContext,
    build: Callable[[str], bytes],
    reason: str,
) -> None:
    tenant = tenants[0]
    body = build(tenant.spec.whatsapp.phone_number_id)
    headers = {SIGNATURE_HEADER: sign(body, secret(tenant))}
    answer = await gateway.post("/webhook/whatsapp", content=body, headers=headers)

    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == {"messages": 0, "statuses": 0}
    [problem] = answer.json()["dead_lettered"]
    assert problem["where"] == "body"
    assert reason in problem["reason"]
    [(subject, letter)] = await dead_letters(js)
    assert subject == catalogue.webhook_dead_letter_subject(tenant.name, None)
    assert (letter.service, letter.consumer, letter.payload) == ("gateway", catalogue.WEBHOOK_DEAD_LETTERS, body)
    assert reason in letter.reason
    assert await stored(js) == 0


async def test_a_bad_message_does_not_sink_its_neighbours_and_metas_retry_changes_nothing(
    gateway: httpx.AsyncClient, tenants: list[BotTenant], js: JetStreamContext
) -> None:
    tenant = tenants[0]
    good = meta.text(CUSTOMER, "answer me")
    wrong_type = meta.text(CUSTOMER, "x") | {"text": "not an object"}
    bad_contact = meta.text("5511.*.>", "subject injection")
    status = meta.status(CUSTOMER, "wamid.S9", "delivered")
    payload = meta.notification(tenant.spec.whatsapp.phone_number_id, [wrong_type, good, bad_contact], [status])

    for _ in range(2):
        answer = await post(gateway, payload, secret(tenant))
        assert answer.status_code == 200, answer.text
        assert answer.json()["accepted"] == {"messages": 1, "statuses": 1}
        assert [p["where"] for p in answer.json()["dead_lettered"]] == [
            "entry[0].changes[0].value.messages[0]",
            "entry[0].changes[0].value.messages[2]",
        ]

    assert (await stored(js), await stored(js, catalogue.STATUS.name)) == (1, 1)
    letters = await dead_letters(js)
    assert [subject for subject, _ in letters] == [
        catalogue.webhook_dead_letter_subject(tenant.name, CUSTOMER),
        catalogue.webhook_dead_letter_subject(tenant.name, None),
    ]
    assert json.loads(letters[0][1].payload) == wrong_type
    assert "text: Input should be a valid dictionary" in letters[0][1].reason
    assert "from: String should match pattern" in letters[1][1].reason
    assert letters[0][1].original_subject == catalogue.inbound_subject(tenant.name, CUSTOMER)

    exposition = (await gateway.get("/metrics")).text
    assert f'zapflow_bus_dead_letters_total{{consumer="webhook",tenant="{tenant.name}"}} 2.0' in exposition
    assert f'zapflow_gateway_webhook_requests_total{{outcome="dead_lettered",tenant="{tenant.name}"}} 2.0' in exposition


async def test_an_event_the_bus_refuses_is_dead_lettered_cut_to_size_and_never_a_503(
    core: CoreSettings, tenants: list[BotTenant], js: JetStreamContext
) -> None:
    tenant = tenants[0]
    # Within every JSON limit, but larger than a NATS message may be (1 MB by default).
    oversized = meta.text(CUSTOMER, "big") | {f"extra{i}": "x" * 100_000 for i in range(12)}
    payload = meta.notification(tenant.spec.whatsapp.phone_number_id, [oversized, meta.text(CUSTOMER, "small")])
    settings = GatewaySettings(core=core, dead_letter_max_bytes=64 * 1024)
    async with serve(create_app(GATEWAY, settings)) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        answer = await post(client, payload, secret(tenant))

    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"]["messages"] == 1
    [(_, letter)] = await dead_letters(js)
    assert "the event bus refused it: MaxPayloadError" in letter.reason
    assert f"the first {64 * 1024} of its" in letter.reason
    assert len(letter.payload) == 64 * 1024
    assert letter.payload == json.dumps(oversized, separators=(",", ":")).encode()[: 64 * 1024]


async def test_a_body_of_many_messages_is_published_in_waves_each_result_with_its_event(
    core: CoreSettings, tenants: list[BotTenant], js: JetStreamContext
) -> None:
    tenant = tenants[0]
    many = [meta.text(f"55119{i:08d}", f"message {i}") for i in range(150)]
    oversized = meta.text(CUSTOMER, "big") | {f"extra{i}": "x" * 100_000 for i in range(12)}
    many.insert(100, oversized)  # in the second wave of publishes
    settings = GatewaySettings(core=core)
    async with serve(create_app(GATEWAY, settings)) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        answer = await post(client, meta.notification(tenant.spec.whatsapp.phone_number_id, many), secret(tenant))

    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"]["messages"] == 150
    assert [part["where"] for part in answer.json()["dead_lettered"]] == [f"message {oversized['id']}"]
    assert await stored(js) == 150


async def test_unknown_types_and_fields_are_published_and_counted(
    gateway: httpx.AsyncClient, tenants: list[BotTenant], js: JetStreamContext
) -> None:
    tenant = tenants[1]
    novel = meta.text(CUSTOMER, "x") | {"type": "hologram", "hologram": {"depth": 3}, "aura": "blue"}
    answer = await post(gateway, meta.notification(tenant.spec.whatsapp.phone_number_id, [novel]), secret(tenant))

    assert answer.json() == {"accepted": {"messages": 1, "statuses": 0}, "dead_lettered": []}
    last = await js.get_last_msg(catalogue.INBOUND.name, catalogue.inbound_subject(tenant.name, CUSTOMER))
    assert json.loads(inbound_pb2.InboundMessage.FromString(last.data or b"").raw_json)["aura"] == "blue"
    exposition = (await gateway.get("/metrics")).text
    assert f'zapflow_gateway_webhook_unknown_total{{kind="field",tenant="{tenant.name}"}} 2.0' in exposition
    assert f'zapflow_gateway_webhook_unknown_total{{kind="message_type",tenant="{tenant.name}"}} 1.0' in exposition
    assert f'zapflow_gateway_inbound_messages_total{{tenant="{tenant.name}",type="other"}} 1.0' in exposition


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
