"""The operator's work, without kopf: a BotTenant resource into the registry, and out of it on delete.

A resource becomes the registry document the services watch (tenants/registry.py), stored with its
secret references, never their values. Its metadata keeps the resource's namespace and uid, so two
BotTenants of the same name in two namespaces cannot overwrite each other's entry, and deleting one
removes only its own. Deleting a tenant also cancels its timers (ZF_TIMERS) and its active campaigns
(SQL); its data is retained, or erased by the scheduler when spec.deletionPolicy is Erase (erasure.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from zapflow.operator.status import REGISTRY_SYNCED, SECRETS_RESOLVED, Condition
from zapflow.platform.catalogue import TIMER_STREAM, due_subject, timer_subject
from zapflow.platform.logging import get_logger
from zapflow.store.campaigns import CampaignError, CampaignStore
from zapflow.store.models import CAMPAIGN_ACTIVE, Campaign
from zapflow.tenants.files import TenantError, parse_tenant
from zapflow.tenants.model import BotTenant
from zapflow.tenants.registry import TenantRegistry

log = get_logger(__name__)

# The keys a Secret holds, by (namespace, name); None when there is no such Secret.
SecretKeys = Callable[[str, str], frozenset[str] | None]


def tenant_from_resource(body: Mapping[str, Any]) -> BotTenant:
    """The registry document of a BotTenant resource; a TenantError names every broken field."""
    metadata = body.get("metadata") or {}
    document = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            "uid": metadata.get("uid"),
        },
        "spec": body.get("spec"),
    }
    return parse_tenant(document, f"BotTenant {metadata.get('namespace')}/{metadata.get('name')}")


def secret_references(tenant: BotTenant) -> list[tuple[str, str, str]]:
    """(field path, Secret name, key) of every secretKeyRef in the spec."""
    found: list[tuple[str, str, str]] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            ref = node.get("secretKeyRef")
            if set(node) == {"secretKeyRef"} and isinstance(ref, dict):
                found.append((path, str(ref["name"]), str(ref["key"])))
                return
            for key, child in node.items():
                walk(child, f"{path}.{key}")
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(child, f"{path}[{index}]")

    walk(tenant.document()["spec"], "spec")
    return found


def check_secrets(tenant: BotTenant, namespace: str, keys_of: SecretKeys, allow_inline: bool) -> Condition:
    """SecretsResolved: every referenced Secret exists in the tenant's namespace and holds its key."""
    inline = tenant.inline_secrets()
    if inline and not allow_inline:
        return Condition(
            SECRETS_RESOLVED,
            False,
            "InlineSecretRefused",
            f"{', '.join(inline)}: inline values are refused outside development; use secretKeyRef or env",
        )
    problems = []
    for path, name, key in secret_references(tenant):
        held = keys_of(namespace, name)
        if held is None:
            problems.append(f"{path}: Secret {namespace}/{name} does not exist")
        elif key not in held:
            problems.append(f"{path}: Secret {namespace}/{name} has no key {key!r}")
    if problems:
        return Condition(SECRETS_RESOLVED, False, "SecretMissing", "; ".join(problems))
    return Condition(SECRETS_RESOLVED, True, "Found", "every referenced Secret key exists")


def secret_data(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a Secret holds, `stringData` over `data` (the API server folds one into the other; kmock does not)."""
    return dict(body.get("data") or {}) | dict(body.get("stringData") or {})


class DataChanges:
    """Tells a Secret or ConfigMap whose data changed from one only relabelled: a digest of each one's data, kept
    in memory (never the data)."""

    def __init__(self) -> None:
        self._digests: dict[tuple[str, str], str] = {}

    def changed(self, namespace: str, name: str, data: Mapping[str, Any]) -> bool:
        """Record the object's data; whether it differs from what was recorded before (False when first seen)."""
        digest = hashlib.sha256(json.dumps(dict(data), sort_keys=True).encode()).hexdigest()
        previous = self._digests.get((namespace, name))
        self._digests[(namespace, name)] = digest
        return previous is not None and previous != digest

    def forget(self, namespace: str, name: str) -> None:
        self._digests.pop((namespace, name), None)


@dataclass(frozen=True)
class Removal:
    """What deleting a tenant did."""

    entry_removed: bool
    campaigns_cancelled: int
    # The entry belongs to a BotTenant of the same name in another namespace: nothing of it was touched.
    another_owner: bool = False


def as_served(tenant: BotTenant, own_workload_available: bool) -> BotTenant:
    """The registry's copy of a tenant: `spec.scaling.dedicated` only once its own workload has a replica ready.

    The conversation replicas send a dedicated tenant's turns to its own replicas; until one is available
    (a new Deployment, an image that does not pull) the shared replicas keep answering it.
    """
    if not tenant.spec.scaling.dedicated or own_workload_available:
        return tenant
    scaling = tenant.spec.scaling.model_copy(update={"dedicated": False})
    return tenant.model_copy(update={"spec": tenant.spec.model_copy(update={"scaling": scaling})})


class TenantSync:
    """Writes BotTenants to the registry and removes them, with their timers and campaigns."""

    def __init__(self, registry: TenantRegistry, js: JetStreamContext, database: AsyncEngine | None) -> None:
        self._registry = registry
        self._js = js
        self._database = database

    async def publish(self, tenant: BotTenant, force: bool = False, keep_serving: bool = False) -> Condition:
        """RegistrySynced after writing the tenant, unless the registry holds it already (or `force`).

        `keep_serving` keeps the workload the entry names (`as_served`), for a write that does not look at it.
        """
        try:
            current = await self._registry.get(tenant.name)
        except TenantError:
            current = None  # an invalid entry written by other means: this one replaces it
        except NatsError as error:
            return _unavailable(error)
        if keep_serving:
            tenant = as_served(tenant, current is not None and current.spec.scaling.dedicated)
        if current is not None and current.owner_uid not in (None, tenant.owner_uid):
            origin = f"{(current.metadata.model_extra or {}).get('namespace')}/{current.name}"
            return Condition(
                REGISTRY_SYNCED,
                False,
                "NameTaken",
                f"the registry entry {tenant.name} belongs to BotTenant {origin}; tenant names are unique "
                "across namespaces",
            )
        if current is not None and not force and current.document() == tenant.document():
            return Condition(REGISTRY_SYNCED, True, "Written", "the registry holds this spec")
        try:
            revision = await self._registry.put(tenant)
        except TenantError as error:  # the number belongs to another tenant
            return Condition(REGISTRY_SYNCED, False, "PhoneNumberTaken", str(error))
        except NatsError as error:
            return _unavailable(error)
        log.info("tenant written to the registry", tenant=tenant.name, revision=revision)
        return Condition(REGISTRY_SYNCED, True, "Written", f"the registry holds this spec (revision {revision})")

    async def drifted(self, tenant: BotTenant) -> str | None:
        """How the registry entry differs from the resource (None: it does not), for an event."""
        try:
            current = await self._registry.get(tenant.name)
        except TenantError:
            return "the registry entry is not a valid BotTenant"
        if current is None:
            return "the registry entry was removed"
        if current.owner_uid not in (None, tenant.owner_uid):
            return None  # another resource's entry: reported by its own conditions, not repaired here
        if current.document() != tenant.document():
            return "the registry entry differs from the resource"
        return None

    async def remove(self, tenant_name: str, uid: str | None) -> Removal:
        """Delete the tenant's registry entry (if it is this resource's), its timers and its active campaigns."""
        try:
            current = await self._registry.get(tenant_name)
        except TenantError:
            current = None
        ours = current is not None and current.owner_uid in (None, uid)
        removed = ours and await self._registry.delete(tenant_name)
        if current is not None and not ours:
            # Another resource owns the name: its timers and campaigns are not this one's to stop.
            return Removal(entry_removed=False, campaigns_cancelled=0, another_owner=True)
        await self._cancel_timers(tenant_name)
        return Removal(entry_removed=removed, campaigns_cancelled=await self._cancel_campaigns(tenant_name))

    async def _cancel_timers(self, tenant_name: str) -> None:
        # Purging both subjects cancels a waiting timer and one fired but not handled yet: the handler
        # finds no newest message of its key and skips it (scheduler/timers.py).
        for subject in (timer_subject("*", tenant_name, "*"), due_subject("*", tenant_name, "*")):
            with contextlib.suppress(NotFoundError):  # no ZF_TIMERS yet: nothing was ever scheduled
                await self._js.purge_stream(TIMER_STREAM.name, subject=subject)

    async def _cancel_campaigns(self, tenant_name: str) -> int:
        if self._database is None:
            return 0
        query = select(Campaign.id).where(Campaign.tenant == tenant_name, Campaign.status.in_(CAMPAIGN_ACTIVE))
        async with self._database.connect() as conn:
            active = list((await conn.execute(query)).scalars())
        store = CampaignStore(self._database)
        cancelled = 0
        for campaign_id in active:
            with contextlib.suppress(CampaignError):  # it ended meanwhile
                cancelled += await store.cancel(campaign_id, datetime.now(UTC)) is not None
        return cancelled


def _unavailable(error: Exception) -> Condition:
    return Condition(REGISTRY_SYNCED, False, "RegistryUnavailable", f"cannot reach the registry: {error!r}")
