"""A BotTenant's status written outside its own handlers, through the Kubernetes API (lightkube).

kopf patches the object a handler was called for; a ConfigMap's event handler can patch only the
ConfigMap. The knowledge condition of the tenants a ConfigMap edit re-ingested is written here, so that
it does not wait for the resync timer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from lightkube import AsyncClient
from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import PatchType

from zapflow.operator import crd
from zapflow.operator.status import READY, Condition, condition_patch

BotTenantResource = create_namespaced_resource(crd.GROUP, crd.VERSION, crd.KIND, crd.PLURAL)


class TenantStatus:
    def __init__(self, kube: AsyncClient, field_manager: str) -> None:
        self._kube = kube
        self._field_manager = field_manager

    async def set_condition(self, namespace: str, name: str, found: Condition) -> bool | None:
        """Write one condition (Ready follows) if it changed; the tenant's Ready status, None when unchanged."""
        current = await self._kube.get(BotTenantResource, name, namespace=namespace)
        # A generic resource is the object's dict: its status as the API returned it.
        status: dict[str, Any] = dict(current.get("status") or {})
        changed = condition_patch(status, found, datetime.now(UTC))
        if not changed:
            return None
        await self._kube.patch(
            BotTenantResource.Status,
            name,
            {"status": changed},
            namespace=namespace,
            patch_type=PatchType.MERGE,
            field_manager=self._field_manager,
        )
        summary = next(condition for condition in changed["conditions"] if condition["type"] == READY)
        return bool(summary["status"] == "True")
