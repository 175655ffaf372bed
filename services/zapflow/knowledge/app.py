"""`zapflow embedding`: the knowledge service, built with the platform's service factory.

It answers knowledge requests on `zf.kb.<operation>.<tenant>` (one queue group: any replica of a
shard answers), embeds finished turns from ZF_EVENTS, keeps the knowledge bases the tenant specs
name in step with them, and follows ZF_KNOWLEDGE so its in-memory index stays equal to SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from nats.aio.msg import Msg
from nats.js import api
from pydantic import BaseModel, ValidationError

from zapflow.knowledge.encoders import EmbeddingFailed, create_encoder
from zapflow.knowledge.messages import (
    CommitRequest,
    EmbedRequest,
    ErrorCode,
    ErrorReply,
    ListRequest,
    RemoveRequest,
    SearchRequest,
    ShowRequest,
)
from zapflow.knowledge.quota import QuotaExceeded
from zapflow.knowledge.service import Knowledge, NotFound
from zapflow.knowledge.settings import EmbeddingSettings
from zapflow.knowledge.store import KnowledgeStore
from zapflow.knowledge.sync import SpecSync
from zapflow.platform import bus, catalogue, metrics
from zapflow.platform.connections import Connections, Needs
from zapflow.platform.logging import get_logger
from zapflow.platform.service import Service
from zapflow.tenants.model import TENANT_NAME_PATTERN
from zapflow.v1 import knowledge_pb2, turn_pb2

log = get_logger(__name__)

# Requests handled at once by one replica; more wait in NATS's subscription buffer.
MAX_CONCURRENT_REQUESTS = 64
# Changes published while a replica starts: it applies those from a little before it began loading.
CLOCK_MARGIN = timedelta(seconds=5)


@dataclasses.dataclass
class EmbeddingParts:
    knowledge: Knowledge


class Requests:
    """Answers knowledge requests, each in a task of its own so that an ingest never holds up a search."""

    def __init__(self, knowledge: Knowledge, max_payload: int) -> None:
        self._knowledge = knowledge
        self._max_payload = max_payload
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_REQUESTS)
        self._running: set[asyncio.Task[None]] = set()

    async def receive(self, msg: Msg) -> None:
        # nats-py runs one subscription's callbacks one after another: hand each request to a task.
        await self._slots.acquire()
        task = asyncio.create_task(self._answer(msg))
        self._running.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._slots.release()

    async def drain(self) -> None:
        if self._running:
            await asyncio.wait(set(self._running))

    async def _answer(self, msg: Msg) -> None:
        operation, tenant = catalogue.request_operation(msg.subject)
        outcome: ErrorCode | str = "ok"
        try:
            if not re.fullmatch(TENANT_NAME_PATTERN, tenant):
                raise _Refused("invalid", f"{tenant!r} is not a tenant name")
            reply = await self._dispatch(operation, tenant, msg.data)
        except _Refused as refused:
            outcome, reply = refused.code, ErrorReply(code=refused.code, error=str(refused))
        except ValidationError as error:
            outcome, reply = "invalid", ErrorReply(code="invalid", error=_reasons(error))
        except QuotaExceeded as error:
            outcome, reply = "quota", ErrorReply(code="quota", error=str(error))
        except NotFound as error:
            outcome, reply = "not_found", ErrorReply(code="not_found", error=str(error))
        except EmbeddingFailed as error:
            outcome, reply = "failed", ErrorReply(code="failed", error=str(error))
        except Exception as error:
            log.exception("knowledge request failed", operation=operation, tenant=tenant)
            outcome, reply = "failed", ErrorReply(code="failed", error=f"internal error: {type(error).__name__}")
        body = reply.model_dump_json().encode()
        if len(body) > self._max_payload:
            # NATS would refuse it, and the asker would wait out its timeout for nothing.
            hint = "ask for fewer hits (a lower limit)" if operation == "search" else "raise the server's max_payload"
            too_large = (
                f"the answer is {len(body):,} bytes; the NATS server takes at most {self._max_payload:,} "
                f"(its max_payload): {hint}"
            )
            outcome, body = "failed", ErrorReply(code="failed", error=too_large).model_dump_json().encode()
        # Labels only from what was recognised: any token can be sent, and each would be a series.
        named = outcome != "invalid" or re.fullmatch(TENANT_NAME_PATTERN, tenant)
        known = operation if operation in catalogue.KNOWLEDGE_OPERATIONS else "unknown"
        metrics.KNOWLEDGE_REQUESTS.labels(tenant if named else catalogue.UNATTRIBUTED, known, outcome).inc()
        if msg.reply:
            with contextlib.suppress(Exception):  # the asker gave up or the connection dropped
                await msg.respond(body)

    async def _dispatch(self, operation: str, tenant: str, data: bytes) -> BaseModel:
        knowledge = self._knowledge
        if not knowledge.serves(tenant):
            raise _Refused("unavailable", f"this replica does not serve tenant {tenant}")
        match operation:
            case "search":
                return await knowledge.search(tenant, SearchRequest.model_validate_json(data))
            case "embed":
                return await knowledge.embed(tenant, EmbedRequest.model_validate_json(data))
            case "commit":
                return await knowledge.commit(tenant, CommitRequest.model_validate_json(data))
            case "list":
                return await knowledge.list_documents(tenant, ListRequest.model_validate_json(data or b"{}"))
            case "show":
                return await knowledge.show_document(tenant, ShowRequest.model_validate_json(data))
            case "remove":
                return await knowledge.remove_documents(tenant, RemoveRequest.model_validate_json(data))
        raise _Refused("invalid", f"no knowledge operation {operation!r}")


class _Refused(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code


def _reasons(error: ValidationError) -> str:
    """pydantic's reasons, each with where, without echoing the input."""
    return "; ".join(
        f"{'.'.join(str(part) for part in reason['loc']) or 'request'}: {reason['msg']}" for reason in error.errors()
    )


async def _follow_changes(connections: Connections, knowledge: Knowledge, since: datetime) -> asyncio.Queue[Msg]:
    """Every change published since `since`, queued until the index is loaded, then applied in order."""
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def enqueue(msg: Msg) -> None:
        queue.put_nowait(msg)

    config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_TIME, opt_start_time=since)
    await connections.js.subscribe(
        catalogue.every(catalogue.KNOWLEDGE_PREFIX),
        stream=catalogue.KNOWLEDGE.name,
        ordered_consumer=True,
        config=config,
        cb=enqueue,
    )
    return queue


async def _apply_changes(queue: asyncio.Queue[Msg], knowledge: Knowledge) -> None:
    while True:
        msg = await queue.get()
        kind = msg.subject.rsplit(".", 1)[-1]
        try:
            await knowledge.apply(kind, knowledge_pb2.KnowledgeChange.FromString(msg.data))
        except Exception:  # one bad change must not stop the replica from following the others
            log.exception("knowledge change not applied", kind=kind)


@asynccontextmanager
async def build(settings: EmbeddingSettings, connections: Connections) -> AsyncIterator[EmbeddingParts]:
    encoder = create_encoder(settings)
    js = connections.js

    async def announce(tenant: str, kind: str, change: knowledge_pb2.KnowledgeChange, msg_id: str) -> None:
        await bus.publish(js, catalogue.knowledge_change_subject(tenant, kind), change, msg_id)

    knowledge = Knowledge(settings, KnowledgeStore(connections.database), encoder, announce)
    changes = await _follow_changes(connections, knowledge, datetime.now(UTC) - CLOCK_MARGIN)
    await knowledge.load()
    tasks = [asyncio.create_task(_apply_changes(changes, knowledge), name="knowledge-changes")]
    requests = Requests(knowledge, connections.nc.max_payload)
    subscriptions = [
        await connections.nc.subscribe(
            catalogue.knowledge_requests(tenant), queue=catalogue.KNOWLEDGE_QUEUE, cb=requests.receive
        )
        for tenant in settings.tenants or ["*"]
    ]
    sync = SpecSync(knowledge, connections.registry, connections.redis, settings)
    tasks.append(asyncio.create_task(sync.run(), name="knowledge-spec-sync"))
    tasks.append(asyncio.create_task(_backfill(knowledge), name="knowledge-backfill"))
    tasks.append(asyncio.create_task(_repair(knowledge, settings.repair_interval_s), name="knowledge-repair"))
    try:
        if settings.embed_turns:

            async def embed_turn(turn: turn_pb2.Turn, _: Msg) -> None:
                await knowledge.embed_turn(turn)

            await connections.consume(turn_consumer(settings), turn_pb2.Turn, embed_turn)
        yield EmbeddingParts(knowledge)
    finally:
        for subscription in subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        await requests.drain()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if encoder is not None:
            await encoder.aclose()


async def _backfill(knowledge: Knowledge) -> None:
    """Chunks without a vector of this model (the backend changed) are embedded in the background."""
    try:
        embedded = await knowledge.backfill()
    except Exception:
        log.exception("knowledge backfill failed; restart the service to try again")
        return
    if embedded:
        log.info("knowledge backfilled", embedded=embedded)


async def _repair(knowledge: Knowledge, interval_s: float) -> None:
    """Now and then, compare the index's document versions with SQL's (a lost change notice heals here)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            repaired = await knowledge.repair()
        except Exception:
            log.exception("knowledge repair failed; the next one tries again")
            continue
        if repaired:
            log.warning("knowledge index repaired: a change notice was missed", documents=len(repaired))


def turn_consumer(settings: EmbeddingSettings) -> catalogue.ConsumerSpec:
    """The turn consumer of this replica's shard: all turns, or its tenants' turns."""
    if not settings.tenants:
        return catalogue.EMBED_TURNS
    return catalogue.shard_consumer(catalogue.EMBED_TURNS, settings.shard, catalogue.turns_of(settings.tenants))


EMBEDDING = Service[EmbeddingSettings, EmbeddingParts](
    name=catalogue.EMBEDDING_SERVICE,
    summary="Knowledge bases, embeddings and search over NATS (health and metrics only).",
    needs=Needs(streams=(catalogue.EVENTS, catalogue.KNOWLEDGE, catalogue.DEAD_LETTER), database=True),
    build=build,
)
