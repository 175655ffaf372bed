"""The operator's request for a tenant erasure, without kopf, against the real scheduler on a real socket."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.js import JetStreamContext
from pydantic import SecretStr

from tests.support.http import serve
from tests.support.tenants import make_tenant
from zapflow.operator.erasure import ErasureFailed, SchedulerErasures, wants_erasure
from zapflow.platform.service import create_app
from zapflow.platform.settings import CoreSettings
from zapflow.scheduler.app import SCHEDULER
from zapflow.scheduler.settings import SchedulerSettings
from zapflow.tenants.registry import TenantRegistry

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    ("spec", "erase"),
    [({"deletionPolicy": "Erase"}, True), ({"deletionPolicy": "Retain"}, False), ({}, False), (None, False)],
)
def test_only_a_spec_that_says_erase_asks_for_an_erasure(spec: dict[str, str] | None, erase: bool) -> None:
    assert wants_erasure({"spec": spec}) is erase


async def test_the_scheduler_erases_a_tenant_once_it_has_left_the_registry(
    core: CoreSettings, js: JetStreamContext, registry: TenantRegistry, tmp_path: Path
) -> None:
    tenant = make_tenant()
    await registry.put(tenant)
    settings = SchedulerSettings(
        core=core.model_copy(update={"analytics_path": tmp_path / "analytics.duckdb"}), interval_seconds=3600
    )
    async with serve(create_app(SCHEDULER, settings)) as url:
        erasures = SchedulerErasures(url, core.admin_token, timeout_s=60)
        registered = f"answered 409: .*delete it first: zapflow tenant delete {tenant.name}"
        with pytest.raises(ErasureFailed, match=registered):
            await erasures.erase(tenant.name)
        assert await registry.delete(tenant.name)
        with pytest.raises(ErasureFailed, match="answered 401"):
            await SchedulerErasures(url, SecretStr("a guess"), timeout_s=60).erase(tenant.name)

        record = await erasures.erase(tenant.name)

        assert (record["tenant"], record["scope"], record["requested_by"]) == (tenant.name, "tenant", "admin-api")
    with pytest.raises(ErasureFailed, match=f"cannot reach the scheduler at {url}"):
        await erasures.erase(tenant.name)
