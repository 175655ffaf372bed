"""The connections a zapflow process declares and opens: NATS and its streams, Redis, the tenant
registry and the relational store. Services, one-shot CLI commands and the benchmark open them
here, the same way, instead of each by hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.message import Message
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from redis.asyncio import Redis

from zapflow.platform import bus
from zapflow.platform.catalogue import ConsumerSpec, StreamSpec
from zapflow.platform.redis import connect_redis
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.registry import TenantRegistry, open_bucket

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")


@dataclass(frozen=True)
class Needs:
    """What a process connects to. Streams are declared (created or updated) on start."""

    streams: Sequence[StreamSpec] = ()
    bus: bool = True
    redis: bool = True
    tenants: bool = True
    # The relational store, which must be migrated to the newest schema first.
    database: bool = False


NOTHING = Needs(bus=False, redis=False, tenants=False)


class NotConnected(RuntimeError):
    """A process asked for a connection it did not declare in its Needs."""


@dataclass
class Connections:
    """What a process holds while it runs; each part exists only when its Needs asked for it."""

    name: str
    core: CoreSettings
    _nc: NATS | None = None
    _redis: Redis | None = None
    _registry: TenantRegistry | None = None
    _database: AsyncEngine | None = None
    consumers: list[bus.Consumer[Any]] = field(default_factory=list)

    @property
    def nc(self) -> NATS:
        return _declared(self._nc, "bus")

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream()

    @property
    def redis(self) -> Redis:
        return _declared(self._redis, "redis")

    @property
    def registry(self) -> TenantRegistry:
        return _declared(self._registry, "tenants")

    @property
    def database(self) -> AsyncEngine:
        return _declared(self._database, "database")

    async def consume(
        self,
        spec: ConsumerSpec,
        event_type: type[Message],
        handler: bus.Handler[Any],
        on_dead_letter: Callable[[Msg], Awaitable[None]] | None = None,
    ) -> None:
        """Start a durable consumer that stops with these connections."""
        consumer: bus.Consumer[Any] = bus.Consumer(self.js, spec, event_type, handler, on_dead_letter)
        await consumer.start()
        self.consumers.append(consumer)

    async def stop_consuming(self) -> None:
        """Stop taking messages; handlers running now finish first."""
        for consumer in self.consumers:
            await consumer.stop()

    async def readiness(self) -> dict[str, bool]:
        checks: dict[str, bool] = {}
        if self._nc is not None:
            checks["nats"] = self._nc.is_connected
        if self._redis is not None:
            checks["redis"] = await _answers(self._redis)
        if self._registry is not None:
            checks["tenants"] = self._registry.ready.is_set()
        if self.consumers:
            checks["consumers"] = all(consumer.running for consumer in self.consumers)
        return checks

    async def close(self) -> None:
        await self.stop_consuming()
        if self._registry is not None:
            await self._registry.stop()
        if self._redis is not None:
            await self._redis.aclose()
        if self._nc is not None:
            # Consumers are stopped and publishes awaited: nothing is left to drain.
            await self._nc.close()
        if self._database is not None:
            await self._database.dispose()


@asynccontextmanager
async def connected(
    name: str, core: CoreSettings, needs: Needs, *, short_lived: bool = False
) -> AsyncIterator[Connections]:
    """Open what `needs` declares, and close it all on the way out.

    A service reconnects to NATS forever (a NATS restart must not end it) and watches the tenant
    registry live; a short-lived command fails fast when a server is not there and reads the
    registry once.
    """
    if needs.database:
        # Imported here: SQLAlchemy and Alembic cost a process that never uses them about 25 MB
        # and a second of start-up.
        from zapflow.store.engine import create_engine
        from zapflow.store.migrate import require_migrated

        await require_migrated(core.database_url)
    connections = Connections(f"zapflow-{name}", core)
    try:
        if needs.bus or needs.tenants:
            connect = bus.connect_once if short_lived else bus.connect
            connections._nc = await connect(core.nats_url, connections.name)
            await bus.ensure_streams(connections.js, needs.streams, core.stream_replicas, core.duplicate_window_s)
        if needs.tenants:
            registry = TenantRegistry(await open_bucket(connections.js, core.tenant_bucket, core.stream_replicas))
            if not short_lived:
                await registry.watch()
            connections._registry = registry
        if needs.redis:
            connections._redis = connect_redis(core.redis_url, core.redis_max_connections)
        if needs.database:
            connections._database = create_engine(core.database_url)
        yield connections
    finally:
        await connections.close()


def _declared(part: T | None, need: str) -> T:
    if part is None:
        raise NotConnected(f"this process did not declare `{need}` in its Needs")
    return part


async def _answers(redis: Redis) -> bool:
    try:
        async with asyncio.timeout(0.5):
            return bool(await redis.ping())
    except Exception:  # down, restarting or too slow: not ready either way
        return False
