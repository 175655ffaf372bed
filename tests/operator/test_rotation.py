"""Secret rotation: a Secret whose data changes gives the tenants that refer to it a new registry revision."""

from __future__ import annotations

import base64
from typing import Any

from nats.js import JetStreamContext

from tests.operator import test_operator_kmock
from tests.operator.test_operator_kmock import NAMESPACE, SECRETS, TENANTS, Cluster, secret, secret_refs
from tests.support.platform import eventually
from tests.support.tenants import tenant_document
from zapflow.operator.sync import DataChanges, secret_data
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.registry import open_bucket

# The operator running against kmock and a real nats-server, as in test_operator_kmock.
cluster = test_operator_kmock.cluster


def test_a_secret_seen_for_the_first_time_is_not_a_rotation() -> None:
    rotations = DataChanges()

    assert not rotations.changed("shop", "creds", {"app-secret": "YQ=="})


def test_changed_data_is_a_rotation_and_the_same_data_is_not() -> None:
    rotations = DataChanges()
    rotations.changed("shop", "creds", {"app-secret": "YQ==", "access-token": "Yg=="})

    assert not rotations.changed("shop", "creds", {"access-token": "Yg==", "app-secret": "YQ=="})
    assert rotations.changed("shop", "creds", {"app-secret": "Yw==", "access-token": "Yg=="})
    assert not rotations.changed("shop", "creds", {"app-secret": "Yw==", "access-token": "Yg=="})


def test_secrets_are_told_apart_by_namespace_and_name() -> None:
    rotations = DataChanges()
    rotations.changed("shop", "creds", {"app-secret": "YQ=="})

    assert not rotations.changed("other", "creds", {"app-secret": "Yw=="})
    assert not rotations.changed("shop", "other", {"app-secret": "Yw=="})


def test_a_deleted_secret_created_again_is_not_a_rotation() -> None:
    rotations = DataChanges()
    rotations.changed("shop", "creds", {"app-secret": "YQ=="})
    rotations.forget("shop", "creds")

    assert not rotations.changed("shop", "creds", {"app-secret": "Yw=="})


def test_string_data_counts_over_data() -> None:
    body = {"data": {"app-secret": "YQ==", "access-token": "Yg=="}, "stringData": {"app-secret": "c"}}

    assert secret_data(body) == {"app-secret": "c", "access-token": "Yg=="}


async def test_a_rotated_secret_gives_its_tenant_a_new_registry_revision(
    cluster: Cluster, js: JetStreamContext, core: CoreSettings
) -> None:
    document = secret_refs(tenant_document(), "creds")
    name = document["metadata"]["name"]
    await cluster.create(SECRETS, secret("creds"))
    await cluster.create(TENANTS, document)
    await cluster.condition(name, "Ready", "True")
    bucket = await open_bucket(js, core.tenant_bucket)
    before = (await bucket.get(name)).revision

    rotated = {"data": {"access-token": base64.b64encode(b"n3w").decode()}}
    async with cluster.api.patch(f"{SECRETS}/creds", json=rotated) as response:
        assert response.status < 300, await response.text()

    async def new_revision() -> int | None:
        revision = (await bucket.get(name)).revision
        return revision if revision is not None and before is not None and revision > before else None

    await eventually(new_revision, timeout=20, what=f"a new registry revision of {name}")

    async def rotation_event() -> dict[str, Any] | None:
        events = (await cluster.fetch(f"/api/v1/namespaces/{NAMESPACE}/events") or {}).get("items") or []
        return next((e for e in events if e.get("reason") == "SecretRotated"), None)

    event = await eventually(rotation_event, timeout=20, what="a SecretRotated event")
    assert event["message"] == f"Secret {NAMESPACE}/creds changed; a new registry revision"
    assert event["involvedObject"]["name"] == name
    stored = await cluster.registry.get(name)
    assert stored is not None
    assert stored.spec.whatsapp.access_token.secret_key_ref is not None  # still a reference, never the value
