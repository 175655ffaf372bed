"""Fixtures that run zapflow's services in the test's event loop against real servers."""

from __future__ import annotations

import pytest
from nats.js import JetStreamContext

from tests.support.servers import ManagedServer
from zapflow.core.registry import TenantRegistry, open_bucket
from zapflow.core.settings import CoreSettings


@pytest.fixture
def core(nats: ManagedServer, redis: ManagedServer) -> CoreSettings:
    return CoreSettings(nats_url=nats.url, redis_url=f"{redis.url}/0", log_json=True)


@pytest.fixture
async def registry(js: JetStreamContext, core: CoreSettings) -> TenantRegistry:
    return TenantRegistry(await open_bucket(js, core.tenant_bucket))
