"""The kopf entry points for BotTenant resources: thin, the work is in sync.py, workload.py, erasure.py, status.py.

`run` connects to NATS (and the database), registers the handlers and runs kopf in this process
(peering for a hot standby), beside the /healthz, /readyz and /metrics every zapflow process serves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from secrets import randbelow
from typing import Any

import kopf
from lightkube import AsyncClient, KubeConfig
from nats.errors import Error as NatsError
from sqlalchemy.exc import SQLAlchemyError

from zapflow.knowledge.client import KnowledgeClient
from zapflow.operator import crd
from zapflow.operator.children import MANAGED_BY
from zapflow.operator.erasure import ErasureFailed, SchedulerErasures, wants_erasure
from zapflow.operator.figures import FigureReader
from zapflow.operator.knowledge import (
    CONFIGMAP_MISSING,
    KNOWLEDGE_LABEL,
    KNOWLEDGE_LABEL_VALUE,
    KNOWLEDGE_UNAVAILABLE,
    ConfigMapFiles,
    KnowledgeSync,
    configmap_content,
    configmap_files,
)
from zapflow.operator.resources import TenantStatus
from zapflow.operator.settings import OperatorSettings
from zapflow.operator.status import (
    READY,
    WORKLOAD_SYNCED,
    Condition,
    condition_patch,
    figures_patch,
    invalid_spec,
    ready,
    status_patch,
    synced_before,
)
from zapflow.operator.sync import (
    DataChanges,
    TenantSync,
    as_served,
    check_secrets,
    secret_data,
    secret_references,
    tenant_from_resource,
)
from zapflow.operator.workload import DedicatedWorkloads, KubernetesError
from zapflow.platform import metrics
from zapflow.platform.connections import Needs, connected
from zapflow.platform.http import operations_server
from zapflow.tenants.files import TenantError
from zapflow.tenants.model import BotTenant

GROUP, VERSION, PLURAL = crd.GROUP, crd.VERSION, crd.PLURAL
FINALIZER = "zapflow.io/operator"
# kopf passes an index to every handler as a keyword argument named by the index's id.
KEYS_INDEX = "keys_by_secret"
TENANTS_INDEX = "tenants_by_secret"
CONFIGMAPS_INDEX = "knowledge_configmaps"
KNOWLEDGE_TENANTS_INDEX = "tenants_by_configmap"
# Only the knowledge ConfigMaps: the API server filters the watch, kopf the handlers (kmock ignores selectors).
KNOWLEDGE_LABELS = {KNOWLEDGE_LABEL: KNOWLEDGE_LABEL_VALUE}

LoginHandler = Callable[..., Any]


def register(
    registry: kopf.OperatorRegistry,
    sync: TenantSync,
    workloads: DedicatedWorkloads,
    knowledge: KnowledgeSync,
    figures: FigureReader,
    statuses: TenantStatus,
    settings: OperatorSettings,
) -> None:
    """Register the BotTenant handlers, the indexes of Secrets, knowledge ConfigMaps and of who refers to them,
    Secret rotation and ConfigMap edits."""
    allow_inline = settings.core.is_development
    retry = settings.registry_retry_seconds
    erasures = SchedulerErasures(settings.scheduler_url, settings.core.admin_token, settings.erasure_timeout_seconds)

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

    @kopf.index("v1", "configmaps", id=CONFIGMAPS_INDEX, labels=KNOWLEDGE_LABELS, registry=registry)
    def knowledge_configmaps(
        namespace: str | None, name: str, body: kopf.Body, **_: Any
    ) -> dict[tuple[str, str], ConfigMapFiles]:
        # Their files only, not the whole object; dropped from the index when the label goes.
        return {(str(namespace), name): configmap_files(body)}

    @kopf.index(GROUP, VERSION, PLURAL, id=KNOWLEDGE_TENANTS_INDEX, registry=registry)
    def tenants_by_configmap(
        namespace: str | None, body: kopf.Body, meta: kopf.Meta, status: kopf.Status, **_: Any
    ) -> dict[tuple[str, str], BotTenant]:
        # The embedding service serves only tenants the registry holds: a ConfigMap edit re-ingests those written.
        if meta.get("deletionTimestamp") or not synced_before(status):
            return {}
        try:
            tenant = tenant_from_resource(body)
        except TenantError:
            return {}
        return {(str(namespace), configmap): tenant for configmap in tenant.spec.knowledge.config_maps}

    def configmaps_of(kwargs: dict[str, Any]) -> Callable[[str, str], ConfigMapFiles | None]:
        index: kopf.Index[tuple[str, str], ConfigMapFiles] = kwargs[CONFIGMAPS_INDEX]

        def files_of(namespace: str, name: str) -> ConfigMapFiles | None:
            held = index.get((namespace, name))
            return next(iter(held), None) if held else None

        return files_of

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    async def reconcile(
        body: kopf.Body,
        name: str,
        meta: kopf.Meta,
        status: kopf.Status,
        namespace: str | None,
        patch: kopf.Patch,
        **kwargs: Any,
    ) -> None:
        def report(found: list[Condition]) -> None:
            conditions = status_patch(status, found, meta.get("generation"), datetime.now(UTC))
            patch.setdefault("status", {}).update(conditions)
            summary = next(condition for condition in found if condition.type == READY)
            metrics.OPERATOR_SYNCS.labels(summary.reason).inc()
            metrics.OPERATOR_TENANT_READY.labels(name).set(1 if summary.status else 0)

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
        try:
            await workloads.prepare(tenant)
        except NatsError as error:
            raise kopf.TemporaryError(f"cannot create the tenant's consumer: {error!r}", delay=retry) from error
        workload = await converge_workload(tenant, body)
        synced = await sync.publish(as_served(tenant, workload.status))
        if not synced.status:
            report([secrets, synced, ready([secrets, synced])])
            raise kopf.TemporaryError(synced.message, delay=retry)
        ingested = await knowledge.sync(tenant, str(namespace), configmaps_of(kwargs))
        report([secrets, synced, workload, ingested, ready([secrets, synced, workload, ingested])])
        patch.setdefault("status", {}).update(figures_patch(status, await figures.read(name)))
        if not workload.status:
            raise kopf.TemporaryError(workload.message, delay=retry)
        # A ConfigMap created or labelled later, a service back: checked again. A refused document waits
        # for the ConfigMap or the spec to change.
        if ingested.reason == CONFIGMAP_MISSING:
            raise kopf.TemporaryError(ingested.message, delay=settings.configmap_retry_seconds)
        if ingested.reason == KNOWLEDGE_UNAVAILABLE:
            raise kopf.TemporaryError(ingested.message, delay=settings.knowledge_retry_seconds)

    async def converge_workload(tenant: BotTenant, body: kopf.Body) -> Condition:
        try:
            return await workloads.converge(tenant, body)
        except (KubernetesError, NatsError) as error:
            return Condition(
                WORKLOAD_SYNCED, False, "KubernetesApiError", f"cannot converge the conversation workload: {error}"
            )

    rotations = DataChanges()

    @kopf.on.event("v1", "secrets", registry=registry)
    async def rotate_secret(
        event: kopf.RawEvent, namespace: str | None, name: str, body: kopf.Body, logger: kopf.Logger, **kwargs: Any
    ) -> None:
        if event["type"] == "DELETED":
            rotations.forget(str(namespace), name)
            return
        if not rotations.changed(str(namespace), name, secret_data(body)):
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
            synced = await sync.publish(tenant, force=True, keep_serving=True)
            outcome = "a new registry revision" if synced.status else f"no new registry revision: {synced.message}"
            kopf.info(
                tenant_reference(tenant),
                reason="SecretRotated",
                message=f"Secret {namespace}/{name} changed; {outcome}",
            )
            logger.info(f"Secret {namespace}/{name} changed: tenant {tenant.name} given {outcome}")

    configmap_edits = DataChanges()

    @kopf.on.event("v1", "configmaps", labels=KNOWLEDGE_LABELS, registry=registry)
    async def reingest(
        event: kopf.RawEvent, namespace: str | None, name: str, body: kopf.Body, logger: kopf.Logger, **kwargs: Any
    ) -> None:
        if event["type"] == "DELETED":
            # Its tenants keep its documents; the drift timer reports it missing.
            configmap_edits.forget(str(namespace), name)
            return
        edited = configmap_edits.changed(str(namespace), name, configmap_content(body))
        if not edited and event["type"] != "ADDED":
            return  # listed at start (the resume handler ingests it), or only its metadata changed
        change = "changed" if edited else "is new (created or labelled)"
        index: kopf.Index[tuple[str, str], BotTenant] = kwargs[KNOWLEDGE_TENANTS_INDEX]
        for tenant in list(index.get((str(namespace), name), [])):
            ingested = await knowledge.sync(tenant, str(namespace), configmaps_of(kwargs))
            try:
                now_ready = await statuses.set_condition(str(namespace), tenant.name, ingested)
            except KubernetesError as error:  # the resync timer writes it then
                logger.warning(f"tenant {tenant.name}: cannot write its KnowledgeSynced condition yet: {error}")
            else:
                if now_ready is not None:
                    metrics.OPERATOR_TENANT_READY.labels(tenant.name).set(1 if now_ready else 0)
            message = f"ConfigMap {namespace}/{name} {change}; {ingested.message}"
            if ingested.status:
                kopf.info(tenant_reference(tenant), reason="KnowledgeUpdated", message=message)
            else:
                kopf.warn(tenant_reference(tenant), reason=ingested.reason, message=message)
            logger.info(f"tenant {tenant.name}: {message}")

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    async def remove(
        name: str,
        namespace: str | None,
        meta: kopf.Meta,
        body: kopf.Body,
        status: kopf.Status,
        logger: kopf.Logger,
        **_: Any,
    ) -> None:
        try:
            removal = await sync.remove(name, meta.get("uid"))
            if not removal.another_owner:
                # Its Deployment and ScaledObject would go with it (owner references); its consumer would not.
                await workloads.remove(name, str(namespace))
        except (NatsError, SQLAlchemyError, KubernetesError) as error:
            message = f"cannot remove the tenant yet: {error!r}"
            raise kopf.TemporaryError(message, delay=settings.registry_retry_seconds) from error
        if not removal.another_owner:  # the series is the owner's too: tenant names are the registry's keys
            with contextlib.suppress(KeyError):  # never synced by this replica
                metrics.OPERATOR_TENANT_READY.remove(name)
        # Only this resource's tenant: its entry removed now, or by an earlier try (none left, and it was written).
        owned = removal.entry_removed or (not removal.another_owner and synced_before(status))
        data = "data retained"
        if wants_erasure(body) and owned:
            try:
                record = await erasures.erase(name)
            except ErasureFailed as error:
                message = f"tenant {name} not erased yet: {error}; the finalizer stays until it is"
                kopf.warn(body, reason="ErasureFailed", message=message)
                raise kopf.TemporaryError(message, delay=retry) from error
            data = f"data erased (erasure {record.get('id')})"
        logger.info(
            f"tenant {name} removed (registry entry removed: {removal.entry_removed}, "
            f"campaigns cancelled: {removal.campaigns_cancelled}, timers cancelled; {data})"
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
        found = dict(status)

        def refresh(condition: Condition) -> None:
            refreshed = condition_patch(found, condition, datetime.now(UTC))
            if refreshed:
                found.update(refreshed)
                patch.setdefault("status", {}).update(refreshed)
                summary = next(condition for condition in refreshed["conditions"] if condition["type"] == READY)
                metrics.OPERATOR_TENANT_READY.labels(name).set(1 if summary["status"] == "True" else 0)

        # A ConfigMap edit's outcome reaches the status here; a document removed by hand comes back.
        refresh(await knowledge.sync(tenant, str(namespace), configmaps_of(kwargs)))
        if tenant.spec.scaling.dedicated:
            # Follows the shared workload (a release upgrade changes its image), brings back a deleted copy, and
            # hands the tenant back to the shared replicas while its own have no available replica.
            workload = await converge_workload(tenant, body)
            refresh(workload)
            tenant = as_served(tenant, workload.status)
        drift = await sync.drifted(tenant)
        if drift is None:
            return
        synced = await sync.publish(tenant, force=True)
        outcome = "rewritten from the resource" if synced.status else f"not rewritten: {synced.message}"
        if synced.status:
            metrics.OPERATOR_DRIFT_REPAIRS.labels(name).inc()
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
    configured.watching.label_selectors["v1", "configmaps"] = ",".join(f"{k}={v}" for k, v in KNOWLEDGE_LABELS.items())
    return configured


def in_cluster_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The pod's service account, or a kubeconfig outside a cluster."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


async def run(
    settings: OperatorSettings,
    login: LoginHandler = in_cluster_login,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
    kube_config: KubeConfig | None = None,
) -> None:
    """Run the operator until `stop_flag` is set (or a signal stops kopf).

    `login` gives kopf its credentials and `kube_config` the client that manages dedicated workloads
    (unset: the pod's service account, else the kubeconfig).
    """
    needs = Needs(redis=False, tenants=True, database=settings.cancel_campaigns)
    kube = AsyncClient(config=kube_config or KubeConfig.from_env(), field_manager=MANAGED_BY)
    async with (
        connected("operator", settings.core, needs) as connections,
        contextlib.aclosing(kube),
        operations_server(settings.host, settings.port, connections, settings.core.metrics_token),
    ):
        database = connections.database if needs.database else None
        sync = TenantSync(connections.registry, connections.js, database)
        workloads = DedicatedWorkloads(kube, connections.js, settings.conversation_workload)
        registry = kopf.OperatorRegistry()
        kopf.on.login(registry=registry)(login)
        knowledge = KnowledgeSync(KnowledgeClient(connections.nc), connections.nc.max_payload)
        statuses = TenantStatus(kube, MANAGED_BY)
        register(registry, sync, workloads, knowledge, FigureReader(connections.nc, database), statuses, settings)
        await kopf.operator(
            registry=registry,
            settings=kopf_settings(),
            standalone=settings.standalone,
            peering_name=None if settings.standalone else settings.peering_name,
            # Equal priorities all pause: unless told, each replica draws its own, so one acts.
            priority=settings.priority if settings.priority is not None else randbelow(1_000_000),
            clusterwide=settings.namespace is None,
            namespaces=[settings.namespace] if settings.namespace else (),
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
