"""Signed hostile webhook bodies against a running platform (issue #9, the bench's phase in small)."""

from __future__ import annotations

import time

from nats.js import JetStreamContext

from bench.hostile import HostileBodies, Tenant, check_parts, post_all, tally
from tests.support.platform import running_platform
from tests.support.tenants import make_tenant, secret
from zapflow.gateway.settings import GatewaySettings
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.model import BotTenant
from zapflow.tenants.registry import TenantRegistry

SEED = 9
BODIES = 300
IN_FLIGHT = 8
CUSTOMER = "5511977776666"


def as_signer(tenant: BotTenant) -> Tenant:
    return Tenant(tenant.name, tenant.spec.whatsapp.phone_number_id, secret(tenant))


async def test_hostile_bodies_get_no_server_error_and_a_customer_is_still_answered(
    core: CoreSettings, registry: TenantRegistry, js: JetStreamContext
) -> None:
    # A second tenant, so that some bodies signed by the first speak for its number too.
    other = make_tenant()
    await registry.put(other)
    async with running_platform(core, registry) as platform:
        tenants = (as_signer(platform.tenant), as_signer(other))
        bodies = HostileBodies(SEED, tenants, int(time.time()), GatewaySettings(core=core).max_body_bytes)

        sent = await post_all(platform.gateway, bodies.bodies(BODIES), IN_FLIGHT)

        figures = tally(sent)
        assert (figures.server_errors, figures.unanswered) == (0, 0), figures.failures
        # 401/403/413 where the envelope says so, else 200 however broken the body is.
        assert figures.unexpected == {}, figures.by_kind
        assert set(figures.statuses) == {"200", "401", "403", "413"}
        parts = await check_parts(js, sent)
        assert parts.readable > 0
        assert parts.foreign > 0
        assert (parts.readable_stored, parts.foreign_stored) == (parts.readable, 0), parts

        await platform.say(CUSTOMER, "what is the price?")
        assert "It costs $10." in await platform.wait_for_texts(CUSTOMER, 2, timeout=30)
