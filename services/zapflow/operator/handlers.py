"""The kopf entry points for BotTenant resources: thin, the work is in sync.py and status.py.

`run` connects to NATS (and the database), registers the handlers and runs kopf in this process:
peering for a hot standby, a liveness endpoint for the probes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from secrets import randbelow
from typing import Any

import kopf
from nats.errors import Error as NatsError
from sqlalchemy.exc import SQLAlchemyError

from zapflow.operator.figures import FigureReader
from zapflow.operator.settings import OperatorSettings
from zapflow.operator.status import Condition, figures_patch, invalid_spec, ready, status_patch, synced_before
from zapflow.operator.sync import (
    SecretRotations,
    TenantSync,
    check_secrets,
    secret_data,
    secret_references,
    tenant_from_resource,
)
from zapflow.platform.connections import Needs, connected
from zapflow.tenants.files import TenantError
from zapflow.tenants.model import BotTenant

GROUP = "zapflow.io"
VERSION = "v1alpha1"
PLURAL = "bottenants"
FINALIZER = "zapflow.io/operator"
# kopf passes an index to every handler as a keyword argument named by the index's id.
KEYS_INDEX = "keys_by_secret"
TENANTS_INDEX = "tenants_by_secret"

LoginHandler = Callable[..., Any]


def register(
    registry: kopf.OperatorRegistry, sync: TenantSync, figures: FigureReader, settings: OperatorSettings
) -> None:
    """Register the BotTenant handlers, the indexes of Secrets and of who refers to them, and Secret rotation."""
    allow_inline = settings.core.is_development

    @kopf.index("v1", "secrets", id=KEYS_INDEX, registry=registry)
    def secret_keys(
        namespace: str | None, name: str, body: kopf.Body, **_: Any
    ) -> dict[tuple[str, str], frozenset[str]]:
        # Key names only: the operator never holds a secret's value.
        return {(str(namespace), name): frozenset(secret_data(body))}

    @kopf.index(GROUP, VERSION, PLURAL, id=TENANTS_INDEX, registry=registry)
    def tenants_by_secret(
        namespace: str | None, body: kopf.Body, meta: kopf.Meta, **_: Any
    ) -> dict[tuple[str, str], BotTenant]:
        if meta.get("deletionTimestamp"):
            return {}  # its entry is being removed: a rotation must not write it back
        try:
            tenant = tenant_from_resource(body)
        except TenantError:
            return {}
        return {(str(namespace), secret): tenant for _, secret, _ in secret_references(tenant)}

    def secrets_of(kwargs: dict[str, Any]) -> Callable[[str, str], frozenset[str] | None]:
        index: kopf.Index[tuple[str, str], frozenset[str]] = kwargs[KEYS_INDEX]

        def keys_of(namespace: str, name: str) -> frozenset[str] | None:
            held = index.get((namespace, name))
            return frozenset().union(*held) if held else None

        return keys_of

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    async def reconcile(
        body: kopf.Body,
        meta: kopf.Meta,
        status: kopf.Status,
        namespace: str | None,
        patch: kopf.Patch,
        **kwargs: Any,
    ) -> None:
        def report(found: list[Condition]) -> None:
            conditions = status_patch(status, found, meta.get("generation"), datetime.now(UTC))
            patch.setdefault("status", {}).update(conditions)

        try:
            tenant = tenant_from_resource(body)
        except TenantError as error:
            # Nothing to retry until the spec changes, which calls this handler again.
            report(invalid_spec(str(error)))
            return
        secrets = check_secrets(tenant, str(namespace), secrets_of(kwargs), allow_inline)
        if not secrets.status:
            report([secrets, ready([secrets])])
            if secrets.reason == "SecretMissing":  # it may be created later: check again
                raise kopf.TemporaryError(secrets.message, delay=settings.secret_retry_seconds)
            return
        synced = await sync.publish(tenant)
        report([secrets, synced, ready([secrets, synced])])
        if not synced.status:
            raise kopf.TemporaryError(synced.message, delay=settings.registry_retry_seconds)

    rotations = SecretRotations()

    @kopf.on.event("v1", "secrets", registry=registry)
    async def rotate_secret(
        event: kopf.RawEvent, namespace: str | None, name: str, body: kopf.Body, logger: kopf.Logger, **kwargs: Any
    ) -> None:
        if event["type"] == "DELETED":
            rotations.forget(str(namespace), name)
            return
        if not rotations.rotated(str(namespace), name, secret_data(body)):
            return
        # Services read a secret once per registry revision: one before the kubelet has refreshed the
        # mounted file would have them keep the old value.
        await asyncio.sleep(settings.secret_propagation_seconds)
        index: kopf.Index[tuple[str, str], BotTenant] = kwargs[TENANTS_INDEX]
        for tenant in list(index.get((str(namespace), name), [])):
            if not check_secrets(tenant, str(namespace), secrets_of(kwargs), allow_inline).status:
                continue  # a key removed: the next change of the tenant reports it
            # A tenant not written yet is written here as its create/update handler would; the ones
            # refused (NameTaken, PhoneNumberTaken) are refused here too.
            synced = await sync.publish(tenant, force=True)
            outcome = "a new registry revision" if synced.status else f"no new registry revision: {synced.message}"
            kopf.info(
                tenant_reference(tenant),
                reason="SecretRotated",
                message=f"Secret {namespace}/{name} changed; {outcome}",
            )
            logger.info(f"Secret {namespace}/{name} changed: tenant {tenant.name} given {outcome}")

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    async def remove(name: str, meta: kopf.Meta, logger: kopf.Logger, **_: Any) -> None:
        try:
            removal = await sync.remove(name, meta.get("uid"))
        except (NatsError, SQLAlchemyError) as error:
            message = f"cannot remove the tenant yet: {error!r}"
            raise kopf.TemporaryError(message, delay=settings.registry_retry_seconds) from error
        logger.info(
            f"tenant {name} removed (registry entry removed: {removal.entry_removed}, "
            f"campaigns cancelled: {removal.campaigns_cancelled}, timers cancelled; data retained)"
        )

    @kopf.timer(
        GROUP,
        VERSION,
        PLURAL,
        registry=registry,
        interval=settings.resync_seconds,
        initial_delay=settings.resync_seconds,
    )
    async def repair_drift(
        body: kopf.Body, name: str, status: kopf.Status, namespace: str | None, patch: kopf.Patch, **kwargs: Any
    ) -> None:
        # The figures, whatever the conditions say: only the ones that changed are patched.
        patch.setdefault("status", {}).update(figures_patch(status, await figures.read(name)))
        if not synced_before(status):
            return  # not written yet: the create/update handler is at work, or waiting
        try:
            tenant = tenant_from_resource(body)
        except TenantError:
            return  # the conditions say why; nothing to keep in sync
        if not check_secrets(tenant, str(namespace), secrets_of(kwargs), allow_inline).status:
            return  # the create/update handler waits for the Secrets
        drift = await sync.drifted(tenant)
        if drift is None:
            return
        synced = await sync.publish(tenant, force=True)
        outcome = "rewritten from the resource" if synced.status else f"not rewritten: {synced.message}"
        kopf.warn(body, reason="RegistryDrift", message=f"{drift}; {outcome}")


def tenant_reference(tenant: BotTenant) -> kopf.Body:
    """Enough of the BotTenant resource a registry document came from to post an event on it."""
    extra = tenant.metadata.model_extra or {}
    return kopf.Body(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "BotTenant",
            "metadata": {"name": tenant.name, "namespace": str(extra["namespace"]), "uid": str(extra["uid"])},
        }
    )


def kopf_settings() -> kopf.OperatorSettings:
    """kopf's own settings: the finalizer carries our name."""
    configured = kopf.OperatorSettings()
    configured.persistence.finalizer = FINALIZER
    return configured


def in_cluster_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The pod's service account, or a kubeconfig outside a cluster."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


async def run(
    settings: OperatorSettings,
    login: LoginHandler = in_cluster_login,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
) -> None:
    """Run the operator until `stop_flag` is set (or a signal stops kopf)."""
    needs = Needs(redis=False, tenants=True, database=settings.cancel_campaigns)
    async with connected("operator", settings.core, needs) as connections:
        database = connections.database if needs.database else None
        sync = TenantSync(connections.registry, connections.js, database)
        registry = kopf.OperatorRegistry()
        kopf.on.login(registry=registry)(login)
        register(registry, sync, FigureReader(connections.nc, database), settings)
        await kopf.operator(
            registry=registry,
            settings=kopf_settings(),
            standalone=settings.standalone,
            peering_name=None if settings.standalone else settings.peering_name,
            # Equal priorities all pause: unless told, each replica draws its own, so one acts.
            priority=settings.priority if settings.priority is not None else randbelow(1_000_000),
            clusterwide=settings.namespace is None,
            namespaces=[settings.namespace] if settings.namespace else (),
            liveness_endpoint=f"http://{settings.host}:{settings.port}/healthz",
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
