"""NATS JetStream: connecting, declaring the catalogue's streams, publishing with dedup ids, and consumers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Generic, TypeVar

import nats
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, BadRequestError, NotFoundError
from opentelemetry import trace

from zapflow.platform import metrics
from zapflow.platform.catalogue import ConsumerSpec, StreamSpec, dead_letter_subject, tenant_of
from zapflow.platform.logging import get_logger
from zapflow.platform.telemetry import extract_context, inject_headers
from zapflow.v1 import turn_pb2

log = get_logger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"
TYPE_HEADER = "Zf-Type"
# The server's error code for a sequence that holds no message (deleted or expired).
NO_MESSAGE_FOUND = 10057


def now_timestamp() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


async def connect(url: str, name: str) -> NATS:
    """Connect with endless reconnects: a NATS restart must not end a service."""

    async def on_error(error: Exception) -> None:
        log.warning("nats error", error=str(error))

    return await nats.connect(
        url,
        name=name,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        connect_timeout=2,
        error_cb=on_error,
    )


async def connect_once(url: str, name: str) -> NATS:
    """Connect for a short-lived command: fail fast when the server is not there."""

    async def quiet(_: Exception) -> None:
        """The caller reports the failure; nats-py would print a traceback per attempt."""

    return await nats.connect(
        error_cb=quiet, servers=url, name=name, allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=1
    )


async def ensure_stream(js: JetStreamContext, spec: StreamSpec, replicas: int = 1) -> None:
    """Create the stream, or bring an existing one to the declared configuration."""
    config = spec.config(replicas)
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)


async def ensure_streams(
    js: JetStreamContext, specs: Sequence[StreamSpec], replicas: int = 1, duplicate_window_s: float | None = None
) -> None:
    """Declare every stream; `duplicate_window_s`, when given, replaces each one's own dedup window."""
    for spec in specs:
        if duplicate_window_s is not None:
            spec = replace(spec, duplicate_window_s=duplicate_window_s)
        await ensure_stream(js, spec, replicas)


async def publish(
    js: JetStreamContext,
    subject: str,
    message: Message,
    msg_id: str,
    timeout: float = 5.0,
) -> api.PubAck:
    """Publish a protobuf event with the dedup id of the fact it stands for and the trace context."""
    headers = inject_headers({MSG_ID_HEADER: msg_id, TYPE_HEADER: message.DESCRIPTOR.full_name})
    tenant = tenant_of(subject)
    started = time.perf_counter()
    ack = await js.publish(subject, message.SerializeToString(), timeout=timeout, headers=headers)
    metrics.PUBLISH_SECONDS.labels(tenant).observe(time.perf_counter() - started)
    if ack.duplicate:
        metrics.DUPLICATES_DROPPED.labels(tenant, "jetstream").inc()
    return ack


class StreamsMissing(Exception):
    """Streams zapflow declares are not on the server; the message names them."""


async def require_streams(js: JetStreamContext, specs: Sequence[StreamSpec]) -> None:
    """Every stream exists; else this NATS is not zapflow's, and finding nothing there proves nothing."""
    missing: list[str] = []
    for spec in specs:
        try:
            await js.stream_info(spec.name)
        except NotFoundError:
            missing.append(spec.name)
    if missing:
        raise StreamsMissing(
            f"no stream {', '.join(missing)} on this server: it is not the NATS zapflow runs on, "
            "or no zapflow service has started on it yet"
        )


async def secure_delete(js: JetStreamContext, stream: str, seq: int) -> bool:
    """Delete a stream message, overwriting it in the stream's files; False when it was already gone."""
    try:
        # Without no_erase the server overwrites the message in its files.
        await js.delete_msg(stream, seq)
    except APIError as error:
        if isinstance(error, NotFoundError) or error.err_code == NO_MESSAGE_FOUND:
            return False  # expired or erased meanwhile: gone either way
        raise
    return True


class RetryLater(Exception):
    """The handler could not finish now; redeliver after `delay` seconds (or the backoff)."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay


class Reject(Exception):
    """The message can never be handled: dead-letter it at once, with the reason."""


class Disposition(Enum):
    ACK = "ack"
    # The handler keeps the message unacknowledged and acks it itself once its work is durable.
    HOLD = "hold"


E = TypeVar("E", bound=Message)
Handler = Callable[[E, Msg], Awaitable[Disposition | None]]


@dataclass
class Consumer(Generic[E]):
    """Runs one durable consumer: decode, handle, then ack, retry with backoff or dead-letter.

    Messages of one subject (one contact) in a fetched batch are handled in order; different
    subjects run concurrently.
    """

    js: JetStreamContext
    spec: ConsumerSpec
    event_type: type[E]
    handle: Handler[E]
    # Called after a message was dead-lettered, so a handler keeping order can move past it.
    on_dead_letter: Callable[[Msg], Awaitable[None]] | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _chains: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _in_flight: int = 0
    _slot_freed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        with contextlib.suppress(BadRequestError):
            await self.js.add_consumer(self.spec.stream.name, self.spec.config())
        self._subscription = await self.js.pull_subscribe_bind(self.spec.durable, stream=self.spec.stream.name)
        self._task = asyncio.create_task(self._run(), name=f"consumer:{self.spec.durable}")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        """Fetch continuously; each subject's messages run in order on their own chain of tasks.

        A slow message (one tenant's slow Graph API) holds up only its own subject, never the
        fetching of everyone else's; at most `max_in_flight` messages are being handled at once.
        """
        stopping = asyncio.create_task(self._stopping.wait())
        while not self._stopping.is_set():
            room = self.spec.max_in_flight - self._in_flight
            if room <= 0:
                self._slot_freed.clear()
                freed = asyncio.create_task(self._slot_freed.wait())
                await asyncio.wait({freed, stopping}, return_when=asyncio.FIRST_COMPLETED)
                freed.cancel()
                continue
            fetch = asyncio.create_task(self._subscription.fetch(min(self.spec.batch, room), timeout=1.0))
            await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not fetch.done():
                # Stopping while idle: messages a cancelled fetch had pulled are redelivered.
                fetch.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await fetch
                break
            try:
                messages = fetch.result()
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except Exception as error:  # a reconnect in progress: wait for the client to recover
                log.warning("fetch failed", consumer=self.spec.durable, error=str(error))
                await asyncio.sleep(0.5)
                continue
            for msg in messages:
                self._dispatch(msg)
        await asyncio.gather(*self._chains.values(), return_exceptions=True)

    def _dispatch(self, msg: Msg) -> None:
        self._in_flight += 1
        previous = self._chains.get(msg.subject)
        self._chains[msg.subject] = asyncio.create_task(self._handle_after(previous, msg))

    async def _handle_after(self, previous: asyncio.Task[None] | None, msg: Msg) -> None:
        try:
            if previous is not None:
                await asyncio.wait({previous})
            await self._handle_one(msg)
        except Exception:  # an ack or nak lost with the connection: the message is redelivered
            log.exception("message handling failed", consumer=self.spec.durable)
        finally:
            self._in_flight -= 1
            self._slot_freed.set()
            if self._chains.get(msg.subject) is asyncio.current_task():
                del self._chains[msg.subject]

    async def _handle_one(self, msg: Msg) -> None:
        tenant = tenant_of(msg.subject)
        attempt = msg.metadata.num_delivered
        if attempt > 1:
            metrics.REDELIVERIES.labels(tenant, self.spec.durable).inc()
        if attempt > self.spec.max_attempts:
            await self._dead_letter(msg, tenant, "the process handling it stopped on every attempt")
            return
        started = time.perf_counter()
        span_name = f"{self.spec.durable} process"
        context = extract_context(dict(msg.headers or {}))
        with trace.get_tracer(__name__).start_as_current_span(span_name, context=context) as span:
            span.set_attribute("messaging.destination", msg.subject)
            span.set_attribute("zapflow.tenant", tenant)
            try:
                event = self.event_type.FromString(msg.data)
                disposition = await self.handle(event, msg)
            except DecodeError as error:
                await self._dead_letter(msg, tenant, f"undecodable {self.event_type.__name__}: {error}")
            except Reject as error:
                await self._dead_letter(msg, tenant, str(error))
            except RetryLater as error:
                await self._retry(msg, tenant, attempt, str(error), error.delay)
            except Exception as error:  # any other failure is retried, then dead-lettered
                log.exception("handler failed", consumer=self.spec.durable, attempt=attempt)
                await self._retry(msg, tenant, attempt, f"{type(error).__name__}: {error}", None)
            else:
                if disposition is not Disposition.HOLD:
                    await msg.ack()
        metrics.HANDLER_SECONDS.labels(tenant, self.spec.durable).observe(time.perf_counter() - started)

    async def _retry(self, msg: Msg, tenant: str, attempt: int, reason: str, delay: float | None) -> None:
        if attempt >= self.spec.max_attempts:
            await self._dead_letter(msg, tenant, reason)
            return
        await msg.nak(delay=delay if delay is not None else self.spec.delay_after(attempt))

    async def _dead_letter(self, msg: Msg, tenant: str, reason: str) -> None:
        letter = turn_pb2.DeadLetter(
            service=self.spec.service,
            consumer=self.spec.durable,
            original_subject=msg.subject,
            message_id=(msg.headers or {}).get(MSG_ID_HEADER, ""),
            deliveries=msg.metadata.num_delivered,
            reason=reason,
            payload=msg.data,
            at=now_timestamp(),
        )
        dedup = f"{self.spec.durable}:{msg.metadata.sequence.stream}"
        await publish(self.js, dead_letter_subject(self.spec.service, msg.subject), letter, dedup)
        metrics.DEAD_LETTERS.labels(tenant, self.spec.durable).inc()
        log.error("dead-lettered", consumer=self.spec.durable, subject_tenant=tenant, reason=reason)
        await msg.term()
        if self.on_dead_letter is not None:
            await self.on_dead_letter(msg)
