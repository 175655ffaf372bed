"""Mounted tenant secrets are read once per registry revision, by the registry's view and the webhook."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.support import meta
from tests.support.http import serve
from tests.support.platform import eventually
from tests.support.tenants import tenant_document
from zapflow.gateway.app import GATEWAY
from zapflow.gateway.settings import GatewaySettings
from zapflow.platform.service import create_app
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.files import parse_tenant
from zapflow.tenants.model import BotTenant
from zapflow.tenants.registry import TenantRegistry

CUSTOMER = "5511988887777"


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    return tmp_path / "secrets"


def mount(secrets_dir: Path, value: str) -> None:
    """Write the app secret as Kubernetes mounts the key `app` of the Secret `wa`."""
    (secrets_dir / "wa").mkdir(parents=True, exist_ok=True)
    (secrets_dir / "wa" / "app").write_text(value + "\n")


@pytest.fixture
def tenant() -> BotTenant:
    document = tenant_document()
    document["spec"]["whatsapp"]["appSecret"] = {"secretKeyRef": {"name": "wa", "key": "app"}}
    return parse_tenant(document)


async def registered(registry: TenantRegistry, name: str, other_than: BotTenant | None = None) -> BotTenant:
    """The registry's live view of the tenant, once it differs from `other_than` (a new revision)."""

    async def probe() -> BotTenant | None:
        seen = registry.by_name(name)
        return seen if seen is not None and seen is not other_than else None

    return await eventually(probe, what=f"a new revision of {name} in the registry")


async def test_the_registry_view_reads_a_secret_again_only_for_a_new_revision(
    registry: TenantRegistry, tenant: BotTenant, secrets_dir: Path
) -> None:
    mount(secrets_dir, "before-rotation")
    await registry.watch()
    try:
        await registry.put(tenant)
        first = await registered(registry, tenant.name)
        ref = first.spec.whatsapp.app_secret
        assert first.secrets.resolve(ref, secrets_dir, allow_inline=False) == "before-rotation"

        mount(secrets_dir, "after-rotation")
        assert registry.by_name(tenant.name) is first
        assert first.secrets.resolve(ref, secrets_dir, allow_inline=False) == "before-rotation"

        await registry.put(tenant)  # re-applied unchanged, as after a Secret rotation
        second = await registered(registry, tenant.name, other_than=first)
        assert second.secrets.resolve(second.spec.whatsapp.app_secret, secrets_dir, False) == "after-rotation"
    finally:
        await registry.stop()


@pytest.fixture
async def applied(registry: TenantRegistry, tenant: BotTenant) -> BotTenant:
    await registry.put(tenant)
    return tenant


@pytest.fixture
async def gateway(core: CoreSettings, secrets_dir: Path, applied: BotTenant) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway that knows the applied tenant from its start."""
    settings = GatewaySettings(core=core.model_copy(update={"secrets_dir": secrets_dir}), publish_timeout_s=1.0)
    async with serve(create_app(GATEWAY, settings)) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield client


async def post(client: httpx.AsyncClient, tenant: BotTenant, app_secret: str) -> httpx.Response:
    """A message to the tenant, signed with this app secret."""
    payload = meta.notification(tenant.spec.whatsapp.phone_number_id, [meta.text(CUSTOMER, "hi")])
    body, headers = meta.signed(payload, app_secret)
    return await client.post("/webhook/whatsapp", content=body, headers=headers)


async def test_the_webhook_keeps_the_app_secret_of_a_revision_until_the_tenant_is_re_applied(
    applied: BotTenant, gateway: httpx.AsyncClient, registry: TenantRegistry, secrets_dir: Path
) -> None:
    mount(secrets_dir, "before-rotation")
    assert (await post(gateway, applied, "before-rotation")).status_code == 200

    mount(secrets_dir, "after-rotation")
    assert (await post(gateway, applied, "after-rotation")).status_code == 403
    assert (await post(gateway, applied, "before-rotation")).status_code == 200

    await registry.put(applied)

    async def rotated() -> bool:
        return (await post(gateway, applied, "after-rotation")).status_code == 200

    await eventually(rotated, what="the gateway to take the re-applied tenant's new secret")
    assert (await post(gateway, applied, "before-rotation")).status_code == 403


async def test_a_missing_app_secret_refuses_the_webhook_until_it_is_mounted(
    applied: BotTenant, gateway: httpx.AsyncClient, secrets_dir: Path
) -> None:
    refused = await post(gateway, applied, "mounted-late")
    # As for any signature the tenant's secret does not produce.
    assert (refused.status_code, refused.json()["detail"]) == (
        403,
        "X-Hub-Signature-256 does not match the tenant's app secret",
    )

    mount(secrets_dir, "mounted-late")

    # A secret that could not be read is not kept: no new revision is needed.
    assert (await post(gateway, applied, "mounted-late")).status_code == 200
