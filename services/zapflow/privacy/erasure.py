"""The right to be forgotten: erase one contact of one tenant, or a whole tenant, from every store.

Redis and JetStream are reached first (JetStream must hold zapflow's streams), so a store that
is down, or a server that is not zapflow's, stops the erasure before anything is erased. Then,
in order, so that nothing erased comes back from a store not erased yet:

1. Redis: the contact's conversation state, locks, history, outbound cursor and handoff owner
   (every key `zf:<tenant>:<kind>:<contact>`), its debounce entry and its place in the campaigns'
   count of customers reached in 24 hours; then the append-only file is rewritten (and an RDB
   snapshot made where one is configured), because the old file still holds the deleted values.
2. JetStream: every message on the contact's subjects in every stream, dead letters included,
   and the tenant's unattributed dead letters (webhook parts whose contact could not be read,
   filed under the catalogue's UNATTRIBUTED contact) whose payload or reason holds the contact's
   number: the whole letter goes, with whatever else it held. Each is deleted with the server's
   secure erase (overwritten with random bytes in the stream's files): a purge by subject only
   marks messages deleted and leaves their bytes in the block files until the block is
   compacted. The recorder cannot record them again once they are gone. The step reports what
   each stream gave up; `ZF_DLQ`'s count includes the unattributed letters.
3. The relational store: every row about the contact (store/lifecycle.py), the embedded turns
   (`turn_vectors`: their words and vectors) and the handoffs with their timelines (`handoffs`,
   `handoff_events`: agents' private notes; open handoffs too) and the contact's campaign rows
   (`campaign_recipients`, and `contact_preferences`: an erased opt-out is forgotten too)
   included, then SQLite's write-ahead log is checkpointed and truncated (its rows are
   overwritten on delete). The
   embedding replicas are told which turn rows went (by row id, never the contact) and drop them
   from memory; a replica that missed it never shows them anyway, since every turn hit is read
   back from SQL.
4. Analytics: rows (sessions, messages, turns, handoffs) hold a pseudonym and no text; the
   pseudonym is replaced by an id that leads nowhere, so the day's figures stay right and nothing
   links them to the person.
5. An `erasures` row records that an erasure happened, when, who asked and what each store gave
   up, and never the phone number.

A step that fails stops the erasure with `ErasureIncomplete`, naming the store and those already
erased; no row is recorded, and since every step is idempotent, asking again finishes it.

Logs never had the phone number or message text (outside debug mode). Knowledge-base chunks
come from the tenant's documents, not from customers, and are not touched.

A whole tenant (`erase_tenant`, once it has left the registry: a live tenant would write new data
while it is erased) goes the same way, store by store in the same order:

1. Redis: every key `zf:<tenant>:*` (conversation state, history, handoff owners, rate and
   messaging-limit counters, agents' sessions, its own due set) and its members of the shared due
   set, then the same rewrite of Redis's files.
2. JetStream: every subject of the tenant in every stream, dead letters (unattributed ones too),
   knowledge changes and timers included, purged by subject: a secure erase overwrites one
   message per request (measured at 1.4 to 7 ms each, slower as blocks fill), hours for a busy
   tenant. A purged message is gone from the stream, but its bytes stay in a block file that
   also holds other tenants' messages until that block is compacted or expires whole (the
   privacy README says how long).
3. The relational store: every row of every table with a tenant column (store/lifecycle.py,
   `TENANT_TABLES`), a batch per transaction, then SQLite's log checkpoint; the embedding
   replicas are told the tenant was erased and reload it from SQL, empty.
4. Analytics: every row of the tenant in every table, figures included (the business asked to
   be forgotten: there is nothing to keep).
5. An `erasures` row with the scope `tenant`. The tenant's earlier erasure records stay: they
   name no one and prove that its customers' requests were honoured.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import aclosing, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb
from nats.errors import Error as NatsError
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from zapflow.analytics import pseudonym
from zapflow.analytics.warehouse import (
    CAMPAIGN_TABLES,
    TABLES,
    WarehouseError,
    changed_rows,
    open_warehouse,
    transaction,
)
from zapflow.platform import bus, catalogue, deadletters, metrics
from zapflow.platform.connections import Connections, Needs, connected
from zapflow.platform.keys import (
    DUE,
    ContactKeys,
    due_member,
    reached_key,
    spans_tenants,
    tenant_due_key,
    tenant_keys_pattern,
)
from zapflow.platform.logging import get_logger
from zapflow.platform.settings import CoreSettings
from zapflow.store.engine import flush_deleted_rows
from zapflow.store.lifecycle import erase_contact, erase_tenant
from zapflow.store.models import ERASURE_SCOPES, Erasure
from zapflow.tenants.files import TenantError
from zapflow.tenants.model import TENANT_NAME_PATTERN
from zapflow.tenants.registry import TenantRegistry
from zapflow.v1 import knowledge_pb2

log = get_logger(__name__)

# E.164: at most 15 digits; WhatsApp ids are the number without "+".
PHONE_DIGITS = re.compile(r"^[0-9]{6,15}$")
PHONE_DECORATION = re.compile(r"[\s()+.\-]")
# How long to wait for Redis to finish rewriting its append-only file.
PERSISTENCE_WAIT_S = 60.0
REQUESTERS = ("cli", "admin-api")
CONTACT, TENANT = ERASURE_SCOPES
# Redis keys asked for per SCAN step and deleted per UNLINK.
REDIS_BATCH = 500
# How long a consumer that only counts a subject's messages outlives a crashed erasure.
COUNTING_CONSUMER_IDLE_S = 30.0
# The stores, as messages name them.
REDIS = "Redis"
JETSTREAM = "JetStream"
DATABASE = "the database"
ANALYTICS = "the analytics file"
T = TypeVar("T")


class ErasureError(Exception):
    """The request is not valid; the message says why."""


class ErasureIncomplete(Exception):
    """A store could not be reached or erased; every step is idempotent, so asking again finishes it.

    The message names the store, says why, and which stores were already erased (`erased`; None
    when the erasure stopped before touching any): nothing is half-done silently, and no erasure
    is recorded until every store has been erased.
    """

    def __init__(self, store: str, reason: str, erased: tuple[str, ...] | None = None) -> None:
        self.store = store
        self.reason = reason
        self.erased = erased
        if erased is None:
            progress = "nothing was erased; erase again once that is fixed"
        else:
            done = f"already erased from {', '.join(erased)}" if erased else "no store was erased before it"
            progress = f"{done}; erase again to finish (every step is idempotent)"
        super().__init__(f"{store}: {reason}; {progress}")


class TenantStillRegistered(ErasureError):
    """The tenant is still in the registry: the services would write new data while it is erased."""

    def __init__(self, tenant: str) -> None:
        super().__init__(
            f"tenant {tenant} is still in the registry: delete it first: zapflow tenant delete {tenant} "
            "(or delete its BotTenant); a live tenant would write new data while it is erased"
        )


def normalise_phone(phone: str) -> str:
    """The WhatsApp id of a phone number given as people write it: +55 (11) 98765-4321."""
    digits = PHONE_DECORATION.sub("", phone)
    if not PHONE_DIGITS.match(digits):
        raise ErasureError(f"not a phone number: expected 6 to 15 digits, optionally with +, got {phone!r}")
    return digits


@dataclass(frozen=True)
class ErasureRecord:
    """What the `erasures` table keeps: no phone number."""

    id: str
    tenant: str
    # contact: one customer of the tenant; tenant: the whole tenant.
    scope: str
    requested_by: str
    requested_at: datetime
    completed_at: datetime
    summary: dict[str, Any]


Step = tuple[str, str, Callable[[], Awaitable[Any]]]


class Eraser:
    """Erases contacts and tenants; every step is idempotent, so a failed erasure is simply asked again.

    `registry` is what a tenant erasure checks the tenant has left; without one it refuses.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        redis: Redis,
        js: JetStreamContext,
        warehouse: Path,
        pseudonym_secret: str,
        registry: TenantRegistry | None = None,
    ) -> None:
        self._engine = engine
        self._redis = redis
        self._js = js
        self._warehouse = warehouse
        self._secret = pseudonym_secret
        self._registry = registry

    @classmethod
    def over(cls, connections: Connections, core: CoreSettings, registry: TenantRegistry | None = None) -> Eraser:
        """An eraser over a process's connections and the analytics file its settings name."""
        secret = core.pseudonym_secret.get_secret_value()
        return cls(connections.database, connections.redis, connections.js, core.analytics_path, secret, registry)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def erase(self, tenant: str, phone: str, requested_by: str) -> ErasureRecord:
        _check_request(tenant, requested_by)
        contact = normalise_phone(phone)
        erasure_id = str(uuid.uuid4())
        requested_at = datetime.now(UTC)
        await self._reach_stores()
        record = await self._run(
            ErasureRecord(erasure_id, tenant, CONTACT, requested_by, requested_at, requested_at, {}),
            (
                ("redis", REDIS, lambda: self._erase_redis(tenant, contact)),
                ("streams", JETSTREAM, lambda: self._erase_streams(tenant, contact)),
                ("sql", DATABASE, lambda: self._erase_sql(tenant, contact)),
                (
                    "analytics",
                    ANALYTICS,
                    lambda: asyncio.to_thread(self._anonymise_analytics, tenant, contact, erasure_id),
                ),
            ),
        )
        metrics.ERASURES.labels(tenant).inc()
        log.info("contact erased", tenant=tenant, erasure_id=erasure_id, requested_by=requested_by)
        return record

    async def erase_tenant(self, tenant: str, requested_by: str) -> ErasureRecord:
        """Erase every trace of a tenant that has left the registry; `TenantStillRegistered` while it has not."""
        _check_request(tenant, requested_by)
        requested_at = datetime.now(UTC)
        await self._reach_stores()
        await _step(JETSTREAM, None, self._require_unregistered(tenant))
        record = await self._run(
            ErasureRecord(str(uuid.uuid4()), tenant, TENANT, requested_by, requested_at, requested_at, {}),
            (
                ("redis", REDIS, lambda: self._erase_tenant_redis(tenant)),
                ("streams", JETSTREAM, lambda: self._purge_tenant_streams(tenant)),
                ("sql", DATABASE, lambda: self._erase_tenant_sql(tenant)),
                ("analytics", ANALYTICS, lambda: asyncio.to_thread(self._delete_tenant_figures, tenant)),
            ),
        )
        log.info("tenant erased", tenant=tenant, erasure_id=record.id, requested_by=requested_by)
        return record

    async def _reach_stores(self) -> None:
        """Reach the remote stores before erasing anything: a server that is down, or is not zapflow's,
        stops the erasure while it is still whole."""
        await _step(REDIS, None, self._redis.ping())
        await _step(JETSTREAM, None, self._require_streams())

    async def _run(self, started: ErasureRecord, steps: tuple[Step, ...]) -> ErasureRecord:
        """Each store's step in order, then the record: the summary says what each store gave up."""
        summary: dict[str, Any] = {}
        erased: tuple[str, ...] = ()
        for key, store, step in steps:
            summary[key] = await _step(store, erased, step())
            erased += (store,)
        record = replace(started, completed_at=datetime.now(UTC), summary=summary)
        await _step(DATABASE, erased, self._record(record))
        return record

    async def _record(self, record: ErasureRecord) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(Erasure).values(
                    id=record.id,
                    tenant=record.tenant,
                    scope=record.scope,
                    requested_by=record.requested_by,
                    requested_at=record.requested_at,
                    completed_at=record.completed_at,
                    summary=record.summary,
                )
            )

    async def _erase_redis(self, tenant: str, contact: str) -> dict[str, Any]:
        keys = ContactKeys(tenant, contact)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(*keys.all())
            # The shared due set, and the tenant's own (a tenant served by a workload of its own).
            pipe.zrem(DUE, keys.due_member)
            pipe.zrem(tenant_due_key(tenant), keys.due_member)
            # The campaigns' count of customers reached in the last 24 hours names them too.
            pipe.zrem(reached_key(tenant), contact)
            deleted, *_ = await pipe.execute()
        deleted = int(deleted)
        return {"keys": deleted, "persistence_rewritten": await self._rewrite_persistence()}

    async def _rewrite_persistence(self) -> list[str]:
        """Rewrite Redis's files so the deleted values leave the disk; which files were rewritten."""
        persistence = await self._redis.info("persistence")
        rewritten: list[str] = []
        if int(persistence.get("aof_enabled", 0)):
            await _wait_until_idle(self._redis, "aof_rewrite_in_progress", "aof_rewrite_scheduled")
            await self._redis.bgrewriteaof()
            await _wait_until_idle(self._redis, "aof_rewrite_in_progress", "aof_rewrite_scheduled")
            if (await self._redis.info("persistence")).get("aof_last_bgrewrite_status") != "ok":
                raise ErasureIncomplete(
                    REDIS, "the keys are deleted, but the append-only file that still holds them could not be rewritten"
                )
            rewritten.append("aof")
        if await _snapshots_configured(self._redis):
            await _wait_until_idle(self._redis, "rdb_bgsave_in_progress")
            await self._redis.bgsave()
            await _wait_until_idle(self._redis, "rdb_bgsave_in_progress")
            rewritten.append("rdb")
        return rewritten

    async def _require_streams(self) -> None:
        try:
            await bus.require_streams(self._js, catalogue.ALL_STREAMS)
        except bus.StreamsMissing as error:
            raise ErasureIncomplete(JETSTREAM, str(error)) from None

    async def _erase_streams(self, tenant: str, contact: str) -> dict[str, int]:
        erased: dict[str, int] = {}
        for stream, subjects in catalogue.contact_subjects(tenant, contact).items():
            erased[stream] = 0
            for subject in subjects:
                for seq in await self._sequences(stream, subject):
                    erased[stream] += int(await bus.secure_delete(self._js, stream, seq))
        erased[catalogue.DEAD_LETTER.name] += await self._erase_unattributed(tenant, contact)
        return erased

    async def _erase_unattributed(self, tenant: str, contact: str) -> int:
        """The tenant's dead letters of no known contact that name this one: found by their bytes."""
        # Digits on both sides would make it part of a longer number, someone else's.
        number = re.compile(rb"(?<![0-9])" + contact.encode() + rb"(?![0-9])")
        subjects = [catalogue.unattributed_dead_letters(tenant)]
        async with aclosing(deadletters.letters_on(self._js, subjects)) as letters:
            naming = [
                letter.seq
                async for letter in letters
                if number.search(letter.payload) or number.search(letter.reason.encode())
            ]
        return await deadletters.erase(self._js, naming)

    async def _sequences(self, stream: str, subject: str) -> list[int]:
        sequences: list[int] = []
        next_seq = 1
        while True:
            try:
                found = await self._js.get_msg(stream, seq=next_seq, subject=subject, next=True)
            except NotFoundError:
                return sequences
            if found.seq is None:
                return sequences
            sequences.append(found.seq)
            next_seq = found.seq + 1

    async def _erase_sql(self, tenant: str, contact: str) -> dict[str, Any]:
        deleted = await erase_contact(self._engine, tenant, contact)
        if deleted.turn_vector_ids:
            await forget_turns(self._js, tenant, deleted.turn_vector_ids)
        return {"rows": deleted.rows, "log_flushed": await flush_deleted_rows(self._engine)}

    def _anonymise_analytics(self, tenant: str, contact: str, erasure_id: str) -> dict[str, int]:
        if not self._warehouse.exists():
            return {}
        contact_key = pseudonym.contact_pseudonym(self._secret, tenant, contact)
        anonymised: dict[str, int] = {}
        with open_warehouse(self._warehouse) as warehouse, transaction(warehouse):
            for table in TABLES:
                anonymised[table] = changed_rows(
                    warehouse.execute(
                        f"UPDATE {table} SET contact_key = ? WHERE tenant = ? AND contact_key = ?",  # noqa: S608
                        [f"erased:{erasure_id}", tenant, contact_key],
                    )
                )
        return anonymised

    async def _require_unregistered(self, tenant: str) -> None:
        if self._registry is None:
            raise ErasureError("this eraser has no tenant registry to check the tenant left it")
        try:
            registered = await self._registry.get(tenant) is not None
        except TenantError:  # an entry that does not validate is still an entry the services may read
            registered = True
        if registered:
            raise TenantStillRegistered(tenant)

    async def _erase_tenant_redis(self, tenant: str) -> dict[str, Any]:
        keys = 0
        batch: list[str] = []
        async for key in self._redis.scan_iter(match=tenant_keys_pattern(tenant), count=REDIS_BATCH):
            if not spans_tenants(key):
                batch.append(key)
            if len(batch) >= REDIS_BATCH:
                keys += await self._redis.unlink(*batch)
                batch = []
        if batch:
            keys += await self._redis.unlink(*batch)
        # The shared due set's members are `<tenant>|<contact>`: a tenant name holds no glob character.
        due = [member async for member, _ in self._redis.zscan_iter(DUE, match=due_member(tenant, "*"))]
        removed = 0
        for start in range(0, len(due), REDIS_BATCH):
            removed += await self._redis.zrem(DUE, *due[start : start + REDIS_BATCH])
        return {"keys": keys, "due": removed, "persistence_rewritten": await self._rewrite_persistence()}

    async def _purge_tenant_streams(self, tenant: str) -> dict[str, int]:
        purged: dict[str, int] = {}
        for stream, subjects in catalogue.tenant_subjects(tenant).items():
            purged[stream] = 0
            for subject in subjects:
                purged[stream] += await self._purge(stream, subject)
        return purged

    async def _purge(self, stream: str, subject: str) -> int:
        """Purge a subject's messages; how many there were (a purge does not say: a consumer counts them first)."""
        counting = api.ConsumerConfig(
            filter_subject=subject,
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.ALL,
            headers_only=True,
            mem_storage=True,
            inactive_threshold=COUNTING_CONSUMER_IDLE_S,
        )
        counted = await self._js.add_consumer(stream, counting)
        with suppress(NotFoundError):
            await self._js.delete_consumer(stream, counted.name)
        await self._js.purge_stream(stream, subject=subject)
        return int(counted.num_pending or 0)

    async def _erase_tenant_sql(self, tenant: str) -> dict[str, Any]:
        deleted = await erase_tenant(self._engine, tenant)
        await tenant_erased(self._js, tenant)
        return {"rows": deleted.rows, "log_flushed": await flush_deleted_rows(self._engine)}

    def _delete_tenant_figures(self, tenant: str) -> dict[str, int]:
        if not self._warehouse.exists():
            return {}
        deleted: dict[str, int] = {}
        with open_warehouse(self._warehouse) as warehouse, transaction(warehouse):
            for table in (*TABLES, *CAMPAIGN_TABLES):
                deleted[table] = changed_rows(
                    warehouse.execute(f"DELETE FROM {table} WHERE tenant = ?", [tenant])  # noqa: S608
                )
        return deleted


async def forget_turns(js: JetStreamContext, tenant: str, ids: list[int]) -> None:
    """Tell the embedding replicas to drop deleted turn rows from memory (the change names rows, not the contact)."""
    change = knowledge_pb2.KnowledgeChange(tenant=tenant, turn_rows=ids)
    subject = catalogue.knowledge_change_subject(tenant, catalogue.TURNS_FORGOTTEN)
    await bus.publish(js, subject, change, f"forget:{tenant}:{min(ids)}-{max(ids)}:{len(ids)}")


async def tenant_erased(js: JetStreamContext, tenant: str) -> None:
    """Tell the embedding replicas the tenant's knowledge and turns are gone from SQL (they reload it: empty)."""
    change = knowledge_pb2.KnowledgeChange(tenant=tenant)
    subject = catalogue.knowledge_change_subject(tenant, catalogue.TENANT_ERASED)
    await bus.publish(js, subject, change, f"erased:{tenant}:{uuid.uuid4()}")


def _check_request(tenant: str, requested_by: str) -> None:
    if not re.match(TENANT_NAME_PATTERN, tenant):
        raise ErasureError(f"not a tenant name: {tenant!r}")
    if requested_by not in REQUESTERS:
        raise ErasureError(f"unknown requester {requested_by!r}")


async def _step(store: str, erased: tuple[str, ...] | None, work: Awaitable[T]) -> T:
    """Run one store's step; an unreachable or failing store makes the erasure incomplete, saying what is done."""
    try:
        return await work
    except ErasureIncomplete as error:
        raise ErasureIncomplete(error.store, error.reason, erased) from error
    except (RedisError, NatsError, TimeoutError, SQLAlchemyError, WarehouseError, duckdb.Error, OSError) as error:
        raise ErasureIncomplete(store, f"{type(error).__name__}: {error}", erased) from error


async def list_erasures(engine: AsyncEngine, tenant: str, limit: int) -> list[ErasureRecord]:
    """A tenant's erasures, newest first."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(Erasure).where(Erasure.tenant == tenant).order_by(Erasure.requested_at.desc()).limit(limit)
        )
        return [
            ErasureRecord(
                row.id, row.tenant, row.scope, row.requested_by, row.requested_at, row.completed_at, row.summary
            )
            for row in rows
        ]


async def _wait_until_idle(redis: Redis, *flags: str) -> None:
    """Wait for a background save or rewrite: Redis reports it only through INFO."""
    deadline = time.monotonic() + PERSISTENCE_WAIT_S
    while True:
        persistence = await redis.info("persistence")
        if not any(int(persistence.get(flag, 0)) for flag in flags):
            return
        if time.monotonic() > deadline:
            raise ErasureIncomplete(REDIS, f"still busy with {', '.join(flags)} after {PERSISTENCE_WAIT_S:.0f} s")
        # Polling is the only way: Redis publishes no event when a rewrite ends.
        await asyncio.sleep(0.05)


async def _snapshots_configured(redis: Redis) -> bool:
    try:
        config = await redis.config_get("save")
    except Exception:  # managed Redis may refuse CONFIG: then its snapshots are the provider's
        return False
    return bool(str(config.get("save", "")).strip())


async def erase_once(core: CoreSettings, tenant: str, phone: str) -> ErasureRecord:
    """Erase with connections of its own, for `zapflow contact erase`."""
    needs = Needs(tenants=False, database=True)
    try:
        async with connected("erasure", core, needs, short_lived=True) as connections:
            return await Eraser.over(connections, core).erase(tenant, phone, "cli")
    except (NatsError, OSError, TimeoutError) as error:  # the steps turn theirs into ErasureIncomplete
        raise ErasureIncomplete(
            JETSTREAM, f"cannot reach NATS at {core.nats_url}: {error or type(error).__name__}"
        ) from None


async def erase_tenant_once(core: CoreSettings, tenant: str) -> ErasureRecord:
    """Erase a tenant with connections of its own, for `zapflow tenant erase`."""
    try:
        async with connected("erasure", core, Needs(database=True), short_lived=True) as connections:
            return await Eraser.over(connections, core, connections.registry).erase_tenant(tenant, "cli")
    except (NatsError, OSError, TimeoutError) as error:  # the steps turn theirs into ErasureIncomplete
        raise ErasureIncomplete(
            JETSTREAM, f"cannot reach NATS at {core.nats_url}: {error or type(error).__name__}"
        ) from None
