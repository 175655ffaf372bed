"""The operator driving the whole platform: a BotTenant created through the emulated Kubernetes API answers a
customer through the sandbox, the gateway and the conversation service, and an update reaches the running service."""

from __future__ import annotations

import httpx
import pytest

from tests.operator.test_operator_kmock import NAMESPACE, TENANTS, Cluster
from tests.support.http import bound_socket, serve
from tests.support.platform import Platform, eventually, register_number
from tests.support.tenants import tenant_document
from zapflow.conversation.app import conversation_service
from zapflow.conversation.settings import ConversationSettings
from zapflow.gateway.app import GATEWAY
from zapflow.gateway.settings import GatewaySettings
from zapflow.platform.service import create_app
from zapflow.platform.settings import CoreSettings
from zapflow.sandbox.app import sandbox_service
from zapflow.sandbox.settings import SandboxSettings

CUSTOMER = "5511988887777"
OLD_PRICE = "It costs $10."
NEW_PRICE = "It costs $12 now."


@pytest.mark.timeout(60)
async def test_a_bottenant_answers_customers_and_its_updates_reach_the_running_service(
    cluster: Cluster,
    core: CoreSettings,
) -> None:
    gateway_socket = bound_socket()
    webhook = f"http://127.0.0.1:{gateway_socket.getsockname()[1]}/webhook/whatsapp"
    sandbox = SandboxSettings(webhook_url=webhook, statuses="delivered")
    async with serve(create_app(sandbox_service(sandbox), sandbox)) as sandbox_url:
        # Inline secret values: the platform runs in development, where the operator accepts them.
        document = tenant_document(sandbox_url)
        document["metadata"]["namespace"] = NAMESPACE
        name = document["metadata"]["name"]
        await cluster.create(TENANTS, document)
        await cluster.condition(name, "Ready", "True")
        tenant = await cluster.registry.get(name)
        assert tenant is not None, "the operator, not the test, puts the tenant in the registry"

        async with (
            httpx.AsyncClient(base_url=sandbox_url, timeout=10) as sandbox_client,
            serve(create_app(GATEWAY, GatewaySettings(core=core)), sock=gateway_socket) as gateway_url,
            serve(create_app(conversation_service(), ConversationSettings(core=core))),
            httpx.AsyncClient(base_url=gateway_url, timeout=10) as gateway_client,
        ):
            await register_number(sandbox_client, tenant)
            platform = Platform(sandbox_client, gateway_client, cluster.registry, tenant)

            await platform.say(CUSTOMER, "what is the price?")
            assert await platform.wait_for_texts(CUSTOMER, 2) == ["Welcome!", OLD_PRICE]

            rules = document["spec"]["bot"]["rules"]
            rules[0]["reply"]["text"] = NEW_PRICE
            patch = {"metadata": {"generation": 2}, "spec": {"bot": {"rules": rules}}}
            async with cluster.api.patch(f"{TENANTS}/{name}", json=patch) as response:
                assert response.status < 300, await response.text()

            async def new_price_answered() -> bool:
                # The conversation service applies a registry revision as it arrives: ask until it has.
                before = len(await platform.texts_to(CUSTOMER))
                await platform.say(CUSTOMER, "and the price today?")
                texts = await platform.wait_for_texts(CUSTOMER, before + 1)
                return texts[-1] == NEW_PRICE

            await eventually(new_price_answered, timeout=20, what="the updated reply in the running service")
            stored = await cluster.registry.get(name)
            assert stored is not None
            assert stored.spec.bot.rules[0].reply is not None
            assert stored.spec.bot.rules[0].reply.text == NEW_PRICE
