"""A BotTenant's condition written outside its handlers (operator/resources.py), against kmock's emulated API."""

from __future__ import annotations

import uuid
from contextlib import aclosing
from typing import Any

import kmock
from lightkube import AsyncClient

from tests.operator.test_operator_kmock import NAMESPACE, TENANTS, VERBS, kube_config
from tests.support.tenants import tenant_document
from zapflow.operator.handlers import GROUP, PLURAL, VERSION
from zapflow.operator.resources import TenantStatus
from zapflow.operator.status import Condition

SYNCED = [
    {"type": kind, "status": "True", "reason": reason, "message": "", "lastTransitionTime": "2026-12-01T00:00:00Z"}
    for kind, reason in (
        ("Ready", "Synced"),
        ("SecretsResolved", "Found"),
        ("RegistrySynced", "Written"),
        ("WorkloadSynced", "Shared"),
        ("KnowledgeSynced", "Ingested"),
    )
]


async def stored_conditions(api: kmock.KubernetesEmulator, name: str) -> dict[str, dict[str, Any]]:
    async with api.get(f"{TENANTS}/{name}") as response:
        assert response.status == 200, await response.text()
        found = await response.json()
    return {c["type"]: c for c in found["status"]["conditions"]}


async def test_a_condition_written_from_outside_its_handlers_moves_ready_with_it(
    kmock: kmock.KubernetesEmulator,
) -> None:
    kmock.resources[f"{GROUP}/{VERSION}/{PLURAL}"] = kmock.ResourceInfo(
        kind="BotTenant", singular="bottenant", namespaced=True, subresources={"status"}, verbs=VERBS
    )
    document = tenant_document()
    name = document["metadata"]["name"]
    document["metadata"] |= {"namespace": NAMESPACE, "uid": str(uuid.uuid4()), "resourceVersion": "1"}
    document["status"] = {"conditions": SYNCED}
    async with kmock.post(TENANTS, json=document) as response:
        assert response.status < 300, await response.text()
    refused = Condition("KnowledgeSynced", False, "DocumentRefused", "kb/notes.pdf: an encrypted PDF")

    async with aclosing(AsyncClient(config=kube_config(str(kmock.url).rstrip("/")))) as kube:
        statuses = TenantStatus(kube, "zapflow-operator")
        assert await statuses.set_condition(NAMESPACE, name, refused) is False
        conditions = await stored_conditions(kmock, name)
        assert conditions["KnowledgeSynced"]["reason"] == "DocumentRefused"
        assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("False", "DocumentRefused")
        assert conditions["RegistrySynced"]["status"] == "True"
        # The same condition again changes nothing.
        assert await statuses.set_condition(NAMESPACE, name, refused) is None
        fixed = Condition("KnowledgeSynced", True, "Ingested", "1 document from ConfigMap kb; 2 passages")
        assert await statuses.set_condition(NAMESPACE, name, fixed) is True
        assert (await stored_conditions(kmock, name))["Ready"]["status"] == "True"
