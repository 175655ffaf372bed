"""A tenant's dedicated conversation workload, converged through the Kubernetes API (lightkube).

Order matters, so that no turn waits on replicas that do not exist: the tenant's own JetStream consumer
is created (`prepare`), then the Deployment and ScaledObject, copied from the shared conversation
workload's (children.py, `converge`), and only once the Deployment has an available replica does the
registry say `dedicated` (sync.as_served): until then the shared replicas answer the tenant. A tenant that
is not (or no longer) dedicated has them deleted, and its consumer too; the registry then sends its turns
back to the shared replicas, which take over what its own replicas left pending.
Creation tolerates an object that exists (it is patched to the wanted state), deletion one already gone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import httpx2
from lightkube import AsyncClient
from lightkube.codecs import from_dict
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.types import PatchType
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError

from zapflow.operator.children import MANAGED_BY, dedicated_conversation, dedicated_name
from zapflow.operator.status import WORKLOAD_SYNCED, Condition
from zapflow.platform import catalogue
from zapflow.tenants.model import BotTenant

ScaledObject = create_namespaced_resource("keda.sh", "v1alpha1", "ScaledObject", "scaledobjects")
NOT_FOUND = 404
CONFLICT = 409
# lightkube raises its ApiError (a subclass) only for errors sent as exactly `application/json`: the
# status code is what matters here, whatever the body.
KubernetesError = httpx2.HTTPStatusError


class DedicatedWorkloads:
    def __init__(self, kube: AsyncClient, js: JetStreamContext, shared_name: str) -> None:
        self._kube = kube
        self._js = js
        self._shared_name = shared_name

    async def prepare(self, tenant: BotTenant) -> None:
        """Create the tenant's own consumer before the registry sends its turns to dedicated replicas."""
        if not tenant.spec.scaling.dedicated:
            return
        spec = catalogue.dedicated_conversation_consumer(tenant.name)
        # Made already (by an earlier sync, or a replica): left as it is.
        with contextlib.suppress(BadRequestError):
            await self._js.add_consumer(spec.stream.name, spec.config())

    async def converge(self, tenant: BotTenant, owner: Mapping[str, Any]) -> Condition:
        """Create, update or delete the tenant's own Deployment and ScaledObject; the condition that says so."""
        namespace = str(owner["metadata"]["namespace"])
        if not tenant.spec.scaling.dedicated:
            await self.remove(tenant.name, namespace)
            return Condition(WORKLOAD_SYNCED, True, "Shared", "the shared conversation workload answers this tenant")
        shared = await self._get(Deployment, self._shared_name, namespace)
        if shared is None:
            return Condition(
                WORKLOAD_SYNCED,
                False,
                "SharedWorkloadMissing",
                f"no Deployment {namespace}/{self._shared_name} to copy: a dedicated workload runs in the namespace "
                "of the zapflow release, beside the shared conversation workload",
            )
        shared_scaled = await self._get(ScaledObject, self._shared_name, namespace)
        wanted = dedicated_conversation(tenant.name, tenant.spec.scaling, owner, shared, shared_scaled)
        scaled_by_keda = len(wanted) > 1
        for item in wanted:
            await self._create_or_patch(item, keep_replicas=scaled_by_keda)
        if not scaled_by_keda:  # KEDA turned off since: the tenant's ScaledObject goes too
            await self._delete(ScaledObject, dedicated_name(self._shared_name, tenant.name), namespace)
        scaling = tenant.spec.scaling
        name = wanted[0]["metadata"]["name"]
        created = await self._get(Deployment, name, namespace) or {}
        if not (created.get("status") or {}).get("availableReplicas"):
            return Condition(
                WORKLOAD_SYNCED,
                False,
                "WorkloadStarting",
                f"Deployment {namespace}/{name} has no available replica yet (kubectl describe deployment {name} "
                f"-n {namespace}); the shared conversation replicas answer the tenant until one is",
            )
        how = (
            f"{scaling.min_replicas} to {scaling.max_replicas} replicas, scaled by KEDA on the consumer "
            f"{catalogue.dedicated_conversation_consumer(tenant.name).durable}"
            if scaled_by_keda
            else f"{scaling.min_replicas} replicas (the shared workload has no ScaledObject to copy)"
        )
        return Condition(WORKLOAD_SYNCED, True, "Dedicated", f"Deployment {namespace}/{name}: {how}")

    async def remove(self, tenant_name: str, namespace: str) -> None:
        """Delete the tenant's own objects and consumer; nothing to do for a tenant that never had them."""
        name = dedicated_name(self._shared_name, tenant_name)
        await self._delete(ScaledObject, name, namespace)
        await self._delete(Deployment, name, namespace)
        spec = catalogue.dedicated_conversation_consumer(tenant_name)
        with contextlib.suppress(NotFoundError):
            await self._js.delete_consumer(spec.stream.name, spec.durable)

    async def _get(self, kind: Any, name: str, namespace: str) -> dict[str, Any] | None:
        try:
            found = await self._kube.get(kind, name, namespace=namespace)
        except KubernetesError as error:
            if error.response.status_code == NOT_FOUND:
                return None
            raise
        document: dict[str, Any] = found.to_dict()
        return document

    async def _create_or_patch(self, item: dict[str, Any], *, keep_replicas: bool) -> None:
        try:
            await self._kube.create(from_dict(item), field_manager=MANAGED_BY)
            return
        except KubernetesError as error:
            if error.response.status_code != CONFLICT:
                raise
        kind = Deployment if item["kind"] == "Deployment" else ScaledObject
        patch = dict(item)
        if keep_replicas and item["kind"] == "Deployment":
            # KEDA sets the count of a running workload: a resync must not reset it.
            patch["spec"] = {key: value for key, value in item["spec"].items() if key != "replicas"}
        await self._kube.patch(
            kind,
            item["metadata"]["name"],
            patch,
            namespace=item["metadata"]["namespace"],
            patch_type=PatchType.MERGE,
            field_manager=MANAGED_BY,
        )

    async def _delete(self, kind: Any, name: str, namespace: str) -> None:
        """Delete one object; one already gone, or a kind the cluster does not serve (no KEDA), is fine."""
        try:
            await self._kube.delete(kind, name, namespace=namespace)
        except KubernetesError as error:
            if error.response.status_code != NOT_FOUND:
                raise
