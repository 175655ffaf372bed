"""The operator's work against a real nats-server and a migrated store: write, refuse, detect drift, remove."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.tenants import tenant_document
from zapflow.operator.status import REGISTRY_SYNCED, SECRETS_RESOLVED
from zapflow.operator.sync import TenantSync, check_secrets, secret_references, tenant_from_resource
from zapflow.platform import bus
from zapflow.platform.catalogue import TIMER_STREAM, due_subject, timer_subject
from zapflow.platform.settings import CoreSettings
from zapflow.scheduler.timers import schedule_timer
from zapflow.store.campaigns import CampaignStore, NewCampaign, NewRecipient
from zapflow.store.engine import create_engine
from zapflow.store.models import CAMPAIGN_CANCELLED
from zapflow.tenants.files import TenantError
from zapflow.tenants.registry import TenantRegistry


def resource(namespace: str = "shop", **spec: Any) -> dict[str, Any]:
    """A BotTenant as the API server returns it, with its credentials in the Secret `creds`."""
    document = tenant_document(spec=spec)
    for field, key in (("appSecret", "app-secret"), ("accessToken", "access-token"), ("verifyToken", "verify-token")):
        document["spec"]["whatsapp"][field] = {"secretKeyRef": {"name": "creds", "key": key}}
    document["metadata"] |= {"namespace": namespace, "uid": str(uuid.uuid4()), "generation": 1}
    return document


@pytest.fixture
async def database(core: CoreSettings) -> Any:
    engine = create_engine(core.database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def sync(registry: TenantRegistry, js: JetStreamContext, database: AsyncEngine) -> TenantSync:
    await bus.ensure_streams(js, [TIMER_STREAM])
    return TenantSync(registry, js, database)


def test_the_registry_document_keeps_references_and_the_resource_it_came_from() -> None:
    body = resource()
    tenant = tenant_from_resource(body)

    assert tenant.metadata.model_extra == {"namespace": "shop", "uid": body["metadata"]["uid"]}
    assert secret_references(tenant) == [
        ("spec.whatsapp.appSecret", "creds", "app-secret"),
        ("spec.whatsapp.accessToken", "creds", "access-token"),
        ("spec.whatsapp.verifyToken", "creds", "verify-token"),
    ]


def test_a_broken_spec_names_the_field() -> None:
    body = resource()
    body["spec"]["rateLimits"] = {"messagesPerSecond": -1}

    with pytest.raises(TenantError, match=r"spec\.rateLimits\.messagesPerSecond"):
        tenant_from_resource(body)


def test_secrets_are_resolved_when_every_key_exists() -> None:
    tenant = tenant_from_resource(resource())
    keys = {("shop", "creds"): frozenset({"app-secret", "access-token", "verify-token"})}

    found = check_secrets(tenant, "shop", lambda ns, name: keys.get((ns, name)), allow_inline=False)

    assert (found.type, found.status) == (SECRETS_RESOLVED, True)


def test_a_missing_secret_or_key_is_named_with_the_field_that_needs_it() -> None:
    tenant = tenant_from_resource(resource())

    absent = check_secrets(tenant, "shop", lambda ns, name: None, allow_inline=False)
    partial = check_secrets(tenant, "shop", lambda ns, name: frozenset({"app-secret"}), allow_inline=False)

    assert (absent.status, absent.reason) == (False, "SecretMissing")
    assert "spec.whatsapp.appSecret: Secret shop/creds does not exist" in absent.message
    assert "spec.whatsapp.accessToken: Secret shop/creds has no key 'access-token'" in partial.message
    assert "appSecret" not in partial.message


def test_inline_secrets_are_refused_outside_development() -> None:
    tenant = tenant_from_resource(tenant_document())  # inline values

    refused = check_secrets(tenant, "shop", lambda ns, name: None, allow_inline=False)
    allowed = check_secrets(tenant, "shop", lambda ns, name: None, allow_inline=True)

    assert (refused.status, refused.reason) == (False, "InlineSecretRefused")
    assert "spec.whatsapp.appSecret" in refused.message
    assert allowed.status


async def test_publish_writes_once_and_again_only_when_the_spec_changes(
    sync: TenantSync, registry: TenantRegistry
) -> None:
    body = resource()
    tenant = tenant_from_resource(body)

    first = await sync.publish(tenant)
    unchanged = await sync.publish(tenant_from_resource(copy.deepcopy(body)))
    body["spec"]["bot"]["fallback"] = {"text": "Pardon?"}
    changed = await sync.publish(tenant_from_resource(body))

    assert (first.type, first.status, unchanged.status, changed.status) == (REGISTRY_SYNCED, True, True, True)
    assert "revision" in first.message and "revision" not in unchanged.message
    stored = await registry.get(tenant.name)
    assert stored is not None and stored.spec.bot.fallback.text == "Pardon?"


async def test_a_name_held_by_a_resource_of_another_namespace_is_refused(
    sync: TenantSync, registry: TenantRegistry
) -> None:
    ours = resource("shop")
    theirs = copy.deepcopy(ours) | {"metadata": ours["metadata"] | {"namespace": "other", "uid": "another-uid"}}
    assert (await sync.publish(tenant_from_resource(ours))).status

    refused = await sync.publish(tenant_from_resource(theirs))

    assert (refused.status, refused.reason) == (False, "NameTaken")
    assert f"belongs to BotTenant shop/{ours['metadata']['name']}" in refused.message
    removal = await sync.remove(ours["metadata"]["name"], "another-uid")
    assert not removal.entry_removed
    assert await registry.get(ours["metadata"]["name"]) is not None


async def test_a_number_of_another_tenant_is_refused(sync: TenantSync) -> None:
    first = resource()
    second = resource()
    second["spec"]["whatsapp"]["phoneNumberId"] = first["spec"]["whatsapp"]["phoneNumberId"]
    assert (await sync.publish(tenant_from_resource(first))).status

    refused = await sync.publish(tenant_from_resource(second))

    assert (refused.status, refused.reason) == (False, "PhoneNumberTaken")
    assert "spec.whatsapp.phoneNumberId" in refused.message


async def test_drift_is_found_when_the_entry_is_removed_or_edited(sync: TenantSync, registry: TenantRegistry) -> None:
    body = resource()
    tenant = tenant_from_resource(body)
    await sync.publish(tenant)
    assert await sync.drifted(tenant) is None

    edited = copy.deepcopy(body)
    edited["spec"]["bot"]["fallback"] = {"text": "edited by hand"}
    await registry.put(tenant_from_resource(edited))
    assert await sync.drifted(tenant) == "the registry entry differs from the resource"

    await registry.delete(tenant.name)
    assert await sync.drifted(tenant) == "the registry entry was removed"


async def test_remove_deletes_the_entry_timers_and_active_campaigns(
    sync: TenantSync, registry: TenantRegistry, js: JetStreamContext, database: AsyncEngine
) -> None:
    body = resource()
    tenant = tenant_from_resource(body)
    await sync.publish(tenant)
    later = datetime.now(UTC) + timedelta(days=1)
    await schedule_timer(js, "reengage", tenant.name, "5511999990000", later)
    campaigns = CampaignStore(database)
    new = NewCampaign(tenant.name, "december", "promo_dec", "pt_BR", "marketing", later, "cli")
    campaign = await campaigns.create(new, [NewRecipient("5511999990000", {})], datetime.now(UTC))
    other_tenant = NewCampaign("someone-else", "december", "promo_dec", "pt_BR", "marketing", later, "cli")
    untouched = await campaigns.create(other_tenant, [NewRecipient("5511999990001", {})], datetime.now(UTC))

    removal = await sync.remove(tenant.name, body["metadata"]["uid"])

    assert removal.entry_removed and removal.campaigns_cancelled == 1
    assert await registry.get(tenant.name) is None
    for subject in (timer_subject("reengage", tenant.name, "5511999990000"), due_subject("*", tenant.name, "*")):
        with pytest.raises(NotFoundError):
            await js.get_last_msg(TIMER_STREAM.name, subject)
    cancelled = await campaigns.get(campaign.id)
    assert cancelled is not None and cancelled.status == CAMPAIGN_CANCELLED
    still = await campaigns.get(untouched.id)
    assert still is not None and still.active


async def test_removing_a_tenant_never_written_succeeds(sync: TenantSync) -> None:
    removal = await sync.remove("never-written", "some-uid")

    assert not removal.entry_removed and removal.campaigns_cancelled == 0
