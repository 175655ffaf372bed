"""What every service process holds while it runs: NATS, Redis, the tenant view, its consumers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from redis.asyncio import Redis

from zapflow.platform import bus, catalogue
from zapflow.platform.redis import connect_redis
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.registry import TenantRegistry, open_bucket


@dataclass
class ServiceRuntime:
    service: str
    core: CoreSettings
    nc: NATS
    js: JetStreamContext
    redis: Redis
    registry: TenantRegistry
    consumers: list[bus.Consumer[Any]] = field(default_factory=list)

    @classmethod
    async def start(cls, service: str, core: CoreSettings, streams: Sequence[catalogue.StreamSpec]) -> ServiceRuntime:
        """Connect, declare the streams this service touches, and load the tenants."""
        nc = await bus.connect(core.nats_url, f"zapflow-{service}")
        js = nc.jetstream()
        await bus.ensure_streams(js, streams, core.stream_replicas)
        registry = TenantRegistry(await open_bucket(js, core.tenant_bucket, core.stream_replicas))
        await registry.watch()
        return cls(service, core, nc, js, connect_redis(core.redis_url, core.redis_max_connections), registry)

    async def consume(
        self,
        spec: catalogue.ConsumerSpec,
        event_type: type[Message],
        handler: bus.Handler[Any],
        on_dead_letter: Callable[[Msg], Awaitable[None]] | None = None,
    ) -> None:
        consumer: bus.Consumer[Any] = bus.Consumer(self.js, spec, event_type, handler, on_dead_letter)
        await consumer.start()
        self.consumers.append(consumer)

    async def _redis_answers(self) -> bool:
        try:
            async with asyncio.timeout(0.5):
                return bool(await self.redis.ping())
        except Exception:  # down, restarting or too slow: not ready either way
            return False

    async def stop(self) -> None:
        for consumer in self.consumers:
            await consumer.stop()
        await self.registry.stop()
        await self.redis.aclose()
        # Consumers are stopped and publishes awaited: nothing is left to drain.
        await self.nc.close()

    async def readiness(self) -> dict[str, bool]:
        return {
            "nats": self.nc.is_connected,
            "redis": await self._redis_answers(),
            "tenants": self.registry.ready.is_set(),
            "consumers": all(c.running for c in self.consumers),
        }
