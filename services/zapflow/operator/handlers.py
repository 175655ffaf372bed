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

from zapflow.operator.settings import OperatorSettings
from zapflow.operator.status import Condition, invalid_spec, ready, status_patch, synced_before
from zapflow.operator.sync import TenantSync, check_secrets, tenant_from_resource
from zapflow.platform.connections import Needs, connected
from zapflow.tenants.files import TenantError

GROUP = "zapflow.io"
VERSION = "v1alpha1"
PLURAL = "bottenants"
FINALIZER = "zapflow.io/operator"
# kopf passes an index to every handler as a keyword argument named by the index's id.
KEYS_INDEX = "keys_by_secret"

LoginHandler = Callable[..., Any]


def register(registry: kopf.OperatorRegistry, sync: TenantSync, settings: OperatorSettings) -> None:
    """Register the BotTenant handlers, and the index of Secrets they check references against."""
    allow_inline = settings.core.is_development

    @kopf.index("v1", "secrets", id=KEYS_INDEX, registry=registry)
    def secret_keys(
        namespace: str | None, name: str, body: kopf.Body, **_: Any
    ) -> dict[tuple[str, str], frozenset[str]]:
        # Key names only: the operator never holds a secret's value.
        data = dict(body.get("data") or {}) | dict(body.get("stringData") or {})
        return {(str(namespace), name): frozenset(data)}

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
    async def repair_drift(body: kopf.Body, status: kopf.Status, namespace: str | None, **kwargs: Any) -> None:
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
        sync = TenantSync(connections.registry, connections.js, connections.database if needs.database else None)
        registry = kopf.OperatorRegistry()
        kopf.on.login(registry=registry)(login)
        register(registry, sync, settings)
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
