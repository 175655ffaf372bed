"""The gateway's roles against real NATS, Redis and the sandbox: the webhook alone, egress alone, or both."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from nats.js import JetStreamContext

from tests.support.http import bound_socket, serve
from tests.support.platform import Platform, eventually, register_number
from tests.support.servers import ManagedServer, free_port
from tests.support.tenants import make_tenant
from zapflow.gateway.app import gateway_service
from zapflow.gateway.settings import GatewayRole, GatewaySettings
from zapflow.platform import bus, catalogue
from zapflow.platform.servers import zapflow_command
from zapflow.platform.service import create_app
from zapflow.platform.settings import CoreSettings
from zapflow.sandbox.app import sandbox_service
from zapflow.sandbox.settings import SandboxSettings
from zapflow.tenants.registry import TenantRegistry
from zapflow.v1 import outbound_pb2

CUSTOMER = "5511955554444"
WEBHOOK_STREAMS = {catalogue.INBOUND.name, catalogue.STATUS.name, catalogue.DEAD_LETTER.name}
EGRESS_STREAMS = {catalogue.OUTBOUND.name, catalogue.EVENTS.name, catalogue.DEAD_LETTER.name}


@contextlib.asynccontextmanager
async def gateway_in_role(core: CoreSettings, registry: TenantRegistry, role: GatewayRole) -> AsyncIterator[Platform]:
    """The sandbox as Meta, relaying its chat to a gateway that runs in `role`."""
    gateway_socket = bound_socket()
    gateway_port = gateway_socket.getsockname()[1]
    # No status webhooks: an egress-only gateway would answer them 404, and no test here reads them.
    sandbox = SandboxSettings(webhook_url=f"http://127.0.0.1:{gateway_port}/webhook/whatsapp", statuses="off")
    async with (
        serve(create_app(sandbox_service(sandbox), sandbox)) as sandbox_url,
        httpx.AsyncClient(base_url=sandbox_url, timeout=10) as sandbox_client,
    ):
        tenant = make_tenant(sandbox_url)
        await registry.put(tenant)
        await register_number(sandbox_client, tenant)
        settings = GatewaySettings(core=core, port=gateway_port, role=role)
        async with (
            serve(create_app(gateway_service(role), settings), sock=gateway_socket) as gateway_url,
            httpx.AsyncClient(base_url=gateway_url, timeout=10) as gateway_client,
        ):
            yield Platform(sandbox_client, gateway_client, registry, tenant)


async def send_reply(js: JetStreamContext, tenant: str, command_id: str, text: str) -> None:
    """The conversation service's part: a bot reply to a customer whose window is open."""
    reply = outbound_pb2.OutboundCommand(
        command_id=command_id, tenant=tenant, contact=CUSTOMER, turn_id=command_id, text=outbound_pb2.OutText(body=text)
    )
    reply.window_closes_at.FromDatetime(datetime.now(UTC) + timedelta(hours=23))
    await bus.publish(js, catalogue.outbound_subject(tenant, CUSTOMER), reply, command_id)


async def zapflow_streams(js: JetStreamContext) -> set[str]:
    """The streams on the server, but the tenant registry's bucket (every role reads it)."""
    return {info.config.name for info in await js.streams_info() if not str(info.config.name).startswith("KV_")}


async def readiness_checks(client: httpx.AsyncClient) -> dict[str, bool]:
    answer = await client.get("/readyz")
    assert answer.status_code == 200, answer.text
    return dict(answer.json()["checks"])


async def test_webhook_role_publishes_inbound_and_never_consumes_outbound(
    core: CoreSettings, registry: TenantRegistry, js: JetStreamContext
) -> None:
    async with gateway_in_role(core, registry, "webhook") as platform:
        wamid = await platform.say(CUSTOMER, "hello")

        stored = await js.get_last_msg(
            catalogue.INBOUND.name, catalogue.inbound_subject(platform.tenant.name, CUSTOMER)
        )
        assert stored.headers is not None and stored.headers["Nats-Msg-Id"] == wamid
        assert await zapflow_streams(js) == WEBHOOK_STREAMS
        # Neither a consumer nor Redis: the webhook only publishes.
        assert await readiness_checks(platform.gateway) == {"nats": True, "tenants": True}
        await bus.ensure_streams(js, [catalogue.OUTBOUND])
        await send_reply(js, platform.tenant.name, "c-unsent", "nobody sends this")
        assert await js.consumers_info(catalogue.OUTBOUND.name) == []
        assert (await platform.gateway.get("/healthz")).status_code == 200
        assert (await platform.gateway.get("/metrics")).status_code == 200


async def test_egress_role_sends_outbound_commands_and_has_no_webhook(
    core: CoreSettings, registry: TenantRegistry, js: JetStreamContext
) -> None:
    async with gateway_in_role(core, registry, "egress") as platform:
        await platform.customer_wrote(CUSTOMER)
        await send_reply(js, platform.tenant.name, "c-egress", "sent by egress")

        assert await platform.wait_for_texts(CUSTOMER, 1) == ["sent by egress"]
        result = await js.get_last_msg(catalogue.EVENTS.name, catalogue.result_subject(platform.tenant.name, CUSTOMER))
        assert outbound_pb2.OutboundResult.FromString(result.data).command_id == "c-egress"
        assert await zapflow_streams(js) == EGRESS_STREAMS
        assert await readiness_checks(platform.gateway) == {
            "nats": True,
            "redis": True,
            "tenants": True,
            "consumers": True,
        }
        assert (await platform.gateway.post("/webhook/whatsapp", content=b"{}")).status_code == 404
        assert (await platform.gateway.get("/webhook/whatsapp")).status_code == 404
        assert (await platform.gateway.get("/healthz")).status_code == 200
        assert (await platform.gateway.get("/metrics")).status_code == 200


async def test_all_role_takes_webhooks_and_sends(
    core: CoreSettings, registry: TenantRegistry, js: JetStreamContext
) -> None:
    async with gateway_in_role(core, registry, "all") as platform:
        wamid = await platform.say(CUSTOMER, "hello")
        await send_reply(js, platform.tenant.name, "c-all", "sent by the whole gateway")

        stored = await js.get_last_msg(
            catalogue.INBOUND.name, catalogue.inbound_subject(platform.tenant.name, CUSTOMER)
        )
        assert stored.headers is not None and stored.headers["Nats-Msg-Id"] == wamid
        assert await platform.wait_for_texts(CUSTOMER, 1) == ["sent by the whole gateway"]
        assert await zapflow_streams(js) == WEBHOOK_STREAMS | EGRESS_STREAMS


async def test_the_command_line_role_wins_over_the_environment(core: CoreSettings, tmp_path: Path) -> None:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("ZAPFLOW_")}
    env |= {"ZAPFLOW_NATS_URL": core.nats_url, "ZAPFLOW_REDIS_URL": core.redis_url, "ZAPFLOW_GATEWAY_ROLE": "webhook"}
    command = zapflow_command("gateway", "--role", "egress", "--host", "127.0.0.1", "--port", str(port))
    process = ManagedServer("gateway-egress", "http", command, port, env=env, log=tmp_path / "gateway.log")
    await asyncio.to_thread(process.start)
    try:
        async with httpx.AsyncClient(base_url=process.url, timeout=10) as client:

            async def consuming() -> bool:
                answer = await client.get("/readyz")
                return answer.status_code == 200 and answer.json()["checks"].get("consumers") is True

            await eventually(consuming, what="the egress consumer to run")
            assert (await client.get("/webhook/whatsapp")).status_code == 404
    finally:
        await asyncio.to_thread(process.stop)
