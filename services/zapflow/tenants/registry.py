"""The tenant registry: BotTenant documents in a NATS KV bucket, watched live by every service."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from zapflow.platform import metrics
from zapflow.platform.logging import get_logger
from zapflow.tenants.files import TenantError, parse_tenant
from zapflow.tenants.model import BotTenant

log = get_logger(__name__)


async def open_bucket(js: JetStreamContext, bucket: str, replicas: int = 1) -> KeyValue:
    """Open the tenant bucket, creating it on first use (history keeps the last 5 versions)."""
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        return await js.create_key_value(
            bucket=bucket, history=5, description="zapflow tenants (BotTenant documents)", replicas=replicas
        )


class TenantRegistry:
    """Reads and writes tenants; `watch()` keeps an in-memory view current without restarts."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._by_name: dict[str, BotTenant] = {}
        self._by_phone_number_id: dict[str, BotTenant] = {}
        self._watch_task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[str, BotTenant | None], None]] = []
        self.ready = asyncio.Event()

    # --- writes and direct reads (the CLI and the admin API) ---

    async def put(self, tenant: BotTenant) -> int:
        await self._refuse_shared_number(tenant)
        return await self._kv.put(tenant.name, json.dumps(tenant.document()).encode())

    async def _refuse_shared_number(self, tenant: BotTenant) -> None:
        number = tenant.spec.whatsapp.phone_number_id
        for other in await self.load_all():
            if other.name != tenant.name and other.spec.whatsapp.phone_number_id == number:
                raise TenantError(f"spec.whatsapp.phoneNumberId: {number} already belongs to tenant {other.name}")

    async def get(self, name: str) -> BotTenant | None:
        try:
            entry = await self._kv.get(name)
        except (KeyNotFoundError, ValueError):
            return None
        if entry.value is None:
            return None
        return parse_tenant(json.loads(entry.value), f"registry entry {name}")

    async def delete(self, name: str) -> bool:
        if await self.get(name) is None:
            return False
        await self._kv.delete(name)
        return True

    async def load_all(self) -> list[BotTenant]:
        tenants = [await self.get(name) for name in sorted(await self._names())]
        return [t for t in tenants if t is not None]

    async def _names(self) -> list[str]:
        """Every key the bucket has held (a deleted one reads as no tenant).

        From the stream's own subject index, not KeyValue.keys(): its watcher may end before it has
        seen every key (nats-io/nats.py#842), which let a second tenant take a number already in use.
        """
        # nats-py keeps the bucket's stream and subject prefix private; they are KV's fixed layout.
        prefix: str = self._kv._pre
        info = await self._kv._js.stream_info(self._kv._stream, subjects_filter=f"{prefix}>")
        return [subject.removeprefix(prefix) for subject in (info.state.subjects or {})]

    # --- the live view the services use ---

    def by_name(self, name: str) -> BotTenant | None:
        return self._by_name.get(name)

    def by_phone_number_id(self, phone_number_id: str) -> BotTenant | None:
        return self._by_phone_number_id.get(phone_number_id)

    def all(self) -> list[BotTenant]:
        return list(self._by_name.values())

    def on_change(self, listener: Callable[[str, BotTenant | None], None]) -> None:
        """Call listener(name, tenant or None when deleted) after every change."""
        self._listeners.append(listener)

    async def watch(self) -> None:
        """Load every tenant, then follow changes; returns once the initial load is done."""
        watcher = await self._kv.watchall()
        self._watch_task = asyncio.create_task(self._follow(watcher), name="tenant-registry-watch")
        await self.ready.wait()

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        try:
            async for entry in watcher:
                if entry is None:  # the end of the initial values
                    self.ready.set()
                    continue
                if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                    self._apply(entry.key, None)
                    continue
                try:
                    # A new BotTenant for every revision, even an identical one: its secrets
                    # (BotTenant.secrets) are read again, which is how a rotated Secret is taken.
                    self._apply(entry.key, parse_tenant(json.loads(entry.value), f"registry entry {entry.key}"))
                except (TenantError, json.JSONDecodeError) as error:
                    log.error("ignoring invalid tenant in registry", tenant=entry.key, error=str(error))
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def _apply(self, name: str, tenant: BotTenant | None) -> None:
        previous = self._by_name.pop(name, None)
        if previous is not None:
            self._by_phone_number_id.pop(previous.spec.whatsapp.phone_number_id, None)
        if tenant is not None:
            self._by_name[name] = tenant
            self._by_phone_number_id[tenant.spec.whatsapp.phone_number_id] = tenant
        metrics.TENANTS_LOADED.set(len(self._by_name))
        log.info("tenant updated" if tenant else "tenant removed", tenant=name)
        for listener in self._listeners:
            listener(name, tenant)
