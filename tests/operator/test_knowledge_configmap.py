"""kopf ingesting a BotTenant's knowledge ConfigMaps, against kmock's emulated API, a real nats-server and a
real embedding service (lexical: the ingest path is the same with a model, and it loads in no time)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest

from tests.knowledge import conftest as knowledge_fixtures
from tests.knowledge.conftest import Embedding
from tests.operator import test_operator_kmock
from tests.operator.test_operator_kmock import NAMESPACE, SECRETS, TENANTS, VERBS, Cluster, secret, secret_refs
from tests.support.platform import eventually
from tests.support.tenants import tenant_document
from zapflow.knowledge.client import KnowledgeClient
from zapflow.knowledge.messages import ListRequest, SearchRequest
from zapflow.operator.knowledge import KNOWLEDGE_LABEL

pytestmark = pytest.mark.timeout(300)

cluster = test_operator_kmock.cluster
embedding_service = knowledge_fixtures.embedding_service
knowledge = knowledge_fixtures.knowledge

CONFIGMAPS = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
GUIDE = "# Delivery\n\nWe deliver in 3 to 5 working days.\n\n# Returns\n\nReturns are free within 7 days.\n"
FAQ = "question,answer\nDo you sell gift cards?,Yes, from R$ 50.\n"


@pytest.fixture(autouse=True)
def configmaps_served(kmock: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """ConfigMaps in the emulated API before the operator starts, and its knowledge retries quick."""
    kmock.resources["v1/configmaps"] = kmock.ResourceInfo(
        kind="ConfigMap", singular="configmap", namespaced=True, verbs=VERBS
    )
    monkeypatch.setenv("ZAPFLOW_OPERATOR_CONFIGMAP_RETRY_SECONDS", "0.3")
    monkeypatch.setenv("ZAPFLOW_OPERATOR_KNOWLEDGE_RETRY_SECONDS", "0.3")


@pytest.fixture
async def embedding(embedding_service: Embedding) -> AsyncIterator[None]:
    async with embedding_service(backend="none"):
        yield


def configmap(name: str, labelled: bool = True, **data: str) -> dict[str, Any]:
    labels = {KNOWLEDGE_LABEL: "true"} if labelled else {}
    metadata = {"name": name, "namespace": NAMESPACE, "labels": labels}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


async def knowledge_tenant(cluster: Cluster, *config_maps: str) -> str:
    """A BotTenant (and its Secret) naming these ConfigMaps; its name."""
    document = secret_refs(
        tenant_document(spec={"knowledge": {"configMaps": list(config_maps), "language": "en"}}), "creds"
    )
    await cluster.create(SECRETS, secret("creds"))
    await cluster.create(TENANTS, document)
    return str(document["metadata"]["name"])


async def documents(client: KnowledgeClient, tenant: str) -> list[str]:
    return sorted(d.name for d in (await client.list_documents(tenant, ListRequest(origin="spec"))).documents)


async def test_a_labelled_configmap_is_ingested_and_searchable(
    cluster: Cluster, embedding: None, knowledge: KnowledgeClient
) -> None:
    await cluster.create(CONFIGMAPS, configmap("kb", **{"guide.md": GUIDE, "faq.csv": FAQ}))
    name = await knowledge_tenant(cluster, "kb")

    synced = await cluster.condition(name, "KnowledgeSynced", "True")

    assert (synced["reason"], synced["message"]) == ("Ingested", "2 documents from ConfigMap kb; 3 passages")
    await cluster.condition(name, "Ready", "True")
    assert await documents(knowledge, name) == ["spec:configmap:kb/faq.csv", "spec:configmap:kb/guide.md"]
    hit = (await knowledge.search(name, SearchRequest(text="can I buy a gift card?"))).hits[0]
    assert hit.document == "spec:configmap:kb/faq.csv"

    async def chunks() -> int | None:
        tenant = await cluster.fetch(f"{TENANTS}/{name}") or {}
        return (tenant.get("status") or {}).get("knowledgeChunks")

    assert await eventually(chunks, timeout=20, what="status.knowledgeChunks") == 3


async def test_a_missing_configmap_is_reported_then_ingested_once_created_and_labelled(
    cluster: Cluster, embedding: None, knowledge: KnowledgeClient
) -> None:
    name = await knowledge_tenant(cluster, "late-kb")

    missing = await cluster.condition(name, "KnowledgeSynced", "False")
    assert missing["reason"] == "ConfigMapMissing"
    assert f"kubectl -n {NAMESPACE} label configmap late-kb {KNOWLEDGE_LABEL}=true" in missing["message"]
    not_ready = await cluster.condition(name, "Ready", "False")
    assert not_ready["reason"] == "ConfigMapMissing"

    # Without the label it does not count; labelled, it does.
    await cluster.create(CONFIGMAPS, configmap("late-kb", labelled=False, **{"guide.md": GUIDE}))
    labelled = {"metadata": {"labels": {KNOWLEDGE_LABEL: "true"}}}
    async with cluster.api.patch(f"{CONFIGMAPS}/late-kb", json=labelled) as response:
        assert response.status < 300, await response.text()

    synced = await cluster.condition(name, "KnowledgeSynced", "True")
    assert synced["message"] == "1 document from ConfigMap late-kb; 2 passages"
    await cluster.condition(name, "Ready", "True")
    assert await documents(knowledge, name) == ["spec:configmap:late-kb/guide.md"]


async def test_an_edited_configmap_is_ingested_again_with_an_event(
    cluster: Cluster, embedding: None, knowledge: KnowledgeClient
) -> None:
    await cluster.create(CONFIGMAPS, configmap("kb", **{"guide.md": GUIDE, "faq.csv": FAQ}))
    name = await knowledge_tenant(cluster, "kb")
    await cluster.condition(name, "Ready", "True")

    edit = {"data": {"guide.md": GUIDE.replace("3 to 5 working days", "48 hours by drone"), "faq.csv": None}}
    async with cluster.api.patch(f"{CONFIGMAPS}/kb", json=edit) as response:
        assert response.status < 300, await response.text()

    async def edited() -> bool:
        hits = (await knowledge.search(name, SearchRequest(text="delivery by drone"))).hits
        return bool(hits) and "48 hours by drone" in hits[0].body

    await eventually(edited, timeout=20, what="the edited passage")
    assert await documents(knowledge, name) == ["spec:configmap:kb/guide.md"]
    assert not (await knowledge.search(name, SearchRequest(text="working"))).hits

    async def knowledge_event() -> dict[str, Any] | None:
        events = (await cluster.fetch(f"/api/v1/namespaces/{NAMESPACE}/events") or {}).get("items") or []
        return next((e for e in events if e.get("reason") == "KnowledgeUpdated"), None)

    event = await eventually(knowledge_event, timeout=20, what="a KnowledgeUpdated event")
    assert event["message"] == f"ConfigMap {NAMESPACE}/kb changed; 1 document from ConfigMap kb; 2 passages"
    assert (event["type"], event["involvedObject"]["name"]) == ("Normal", name)

    # The ConfigMap's handler writes the condition (tests/operator/test_resources.py proves it without the timer).
    async def condition_follows() -> bool:
        tenant = await cluster.fetch(f"{TENANTS}/{name}") or {}
        conditions = (tenant.get("status") or {}).get("conditions") or []
        synced = next((c for c in conditions if c["type"] == "KnowledgeSynced"), {})
        return bool(synced.get("message") == "1 document from ConfigMap kb; 2 passages")

    await eventually(condition_follows, timeout=20, what="the condition after the edit")
