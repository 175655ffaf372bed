"""Egress: outbound commands from the bus become Graph API calls, each sent at most once.

Every command has an idempotency key in Redis (`keys.COMMAND`):
  absent            never tried (or a retryable failure released it) -> send
  calling:<epoch>   a call is under way; older than the lease means its process died mid-call
  sent:<wamid>      done: a redelivery is acknowledged without a second send
  failed:<code>     Meta refused it for good
The key is set to calling *before* the request leaves. The one crash window left is a process
killed after the request left and before the key became sent: the redelivery finds an expired
calling key, cannot know whether Meta got it, and dead-letters it as uncertain instead of
sending again (at most once, never twice). The same holds for a read timeout.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import aiohttp
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from redis.asyncio import Redis

from zapflow.gateway.graph import (
    WINDOW_CLOSED,
    GraphResult,
    Outcome,
    classify,
    classify_transport_error,
    graph_payload,
)
from zapflow.gateway.ratelimit import RateLimiter
from zapflow.gateway.settings import GatewaySettings
from zapflow.platform import bus, catalogue, keys, metrics
from zapflow.platform.logging import get_logger
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.model import BotTenant
from zapflow.tenants.registry import TenantRegistry
from zapflow.tenants.secrets import SecretUnavailable
from zapflow.v1 import outbound_pb2 as pb
from zapflow.whatsapp import window

log = get_logger(__name__)
tracer = trace.get_tracer(__name__)

_ADVANCE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
return 1
"""

# Settled earlier commands a check may step over before it gives up for this delivery.
MAX_SETTLED_SKIPS = 20
QUICK_ORDER_WAITS = 20
SLOW_ORDER_WAIT_S = 2.0
ACK_FLOOR_CACHE_S = 1.0
# The result of a bot command not sent because a person had the conversation.
SKIPPED = "skipped"


class Egress:
    def __init__(
        self,
        js: JetStreamContext,
        redis: Redis,
        registry: TenantRegistry,
        http: aiohttp.ClientSession,
        settings: GatewaySettings,
    ) -> None:
        self._js = js
        self._redis = redis
        self._registry = registry
        self._http = http
        self._settings = settings
        self._core: CoreSettings = settings.core
        self._limiter = RateLimiter(redis)
        self._advance = redis.register_script(_ADVANCE)
        self._ack_floor_value = 0
        self._ack_floor_read_at = -ACK_FLOOR_CACHE_S

    async def handle(self, command: pb.OutboundCommand, msg: Msg) -> None:
        tenant = self._registry.by_name(command.tenant)
        if tenant is None:
            raise bus.RetryLater(f"tenant {command.tenant} is not in the registry (yet)")
        key = keys.command_key(command.tenant, command.command_id)
        contact = keys.ContactKeys(command.tenant, command.contact)
        # The reads every send starts with, in one round trip.
        values = await self._redis.mget(contact.outbound_cursor, key, contact.owner, contact.window)
        cursor_value, state, owner, last_customer = (None if value is None else str(value) for value in values)
        await self._wait_for_earlier(command, msg, cursor_value)
        # A command dead-lettered on the way (bus.Reject) is moved past by `settled`, the
        # consumer's dead-letter hook.
        if owner is not None and not command.sender and state is None:
            await self._hold_for_human(command)
        elif state is None and _outside_window(command, last_customer):
            await self._refuse_outside_window(tenant, command, key)
        else:
            await self._deliver(tenant, command, msg, key, state)
        await self._move_past(command, msg)

    async def _hold_for_human(self, command: pb.OutboundCommand) -> None:
        """A person has the conversation: the bot's command is not sent (humans win), and says why."""
        metrics.OUTBOUND_REQUESTS.labels(command.tenant, "held_for_human").inc()
        report = pb.OutboundResult(
            command_id=command.command_id,
            tenant=command.tenant,
            contact=command.contact,
            turn_id=command.turn_id,
            result=SKIPPED,
            error_title="a person has the conversation",
            at=bus.now_timestamp(),
        )
        subject = catalogue.result_subject(command.tenant, command.contact)
        await bus.publish(self._js, subject, report, f"{command.command_id}:result")

    async def _refuse_outside_window(self, tenant: BotTenant, command: pb.OutboundCommand, key: str) -> None:
        """Free-form text past the customer's 24-hour window: Meta would refuse it, so it never leaves."""
        if not await self._redis.set(key, f"failed:{WINDOW_CLOSED}", nx=True, ex=self._settings.sent_key_ttl_s):
            await self._already_handled(command, str(await self._redis.get(key) or ""))
            return
        metrics.OUTSIDE_WINDOW.labels(command.tenant, command.sender or "bot").inc()
        title = "not sent: the customer's 24-hour window is closed (send an approved template)"
        refused = GraphResult(Outcome.WINDOW_CLOSED, error_code=WINDOW_CLOSED, error_title=title)
        await self._settle(command, key, refused)

    async def _wait_for_earlier(self, command: pb.OutboundCommand, msg: Msg, cursor_value: str | None) -> None:
        """Per-contact order: send only after every earlier command to this contact is settled.

        Redeliveries (a killed replica, a 429 backoff) would otherwise let a later reply
        overtake an earlier one. The cursor is the last settled stream sequence of the contact.
        A command that must wait goes back to the stream for a moment instead of blocking the
        consumer, since the earlier one may be redelivered through this very consumer.
        """
        seq = msg.metadata.sequence.stream
        cursor_key = keys.ContactKeys(command.tenant, command.contact).outbound_cursor
        # Unknown cursor (a new contact, or Redis lost it): everything up to the consumer's ack
        # floor is settled for sure; what lies above it is checked one by one below.
        cursor = int(cursor_value) if cursor_value is not None else await self._ack_floor()
        for _ in range(MAX_SETTLED_SKIPS):
            if cursor >= seq - 1:
                return
            try:
                earlier = await self._js.get_msg(
                    catalogue.OUTBOUND.name, seq=cursor + 1, subject=msg.subject, next=True
                )
            except NotFoundError:
                return
            if earlier.seq is None or earlier.seq >= seq:
                return
            earlier_command = pb.OutboundCommand.FromString(earlier.data or b"")
            state = str(await self._redis.get(keys.command_key(command.tenant, earlier_command.command_id)) or "")
            if not state.startswith(("sent:", "failed:")):
                metrics.OUTBOUND_REQUESTS.labels(command.tenant, "waiting_for_earlier").inc()
                # Soon at first; then patiently, since a dead replica's command comes back only
                # after the egress ack wait.
                attempt = msg.metadata.num_delivered
                delay = self._settings.order_wait_s if attempt <= QUICK_ORDER_WAITS else SLOW_ORDER_WAIT_S
                raise bus.RetryLater("an earlier message to this contact is not settled yet", delay)
            # Settled, but its process died before moving the cursor: move it now.
            cursor = earlier.seq
            await self._advance(keys=[cursor_key], args=[cursor, self._settings.sent_key_ttl_s])

    async def _ack_floor(self) -> int:
        """The stream sequence below which the egress consumer has acknowledged everything."""
        now = time.monotonic()
        if now - self._ack_floor_read_at > ACK_FLOOR_CACHE_S:
            info = await self._js.consumer_info(catalogue.OUTBOUND.name, catalogue.EGRESS.durable)
            self._ack_floor_value = int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0
            self._ack_floor_read_at = now
        return self._ack_floor_value

    async def settled(self, msg: Msg) -> None:
        """A command was dead-lettered by the consumer: later ones to its contact may go."""
        await self._move_past(pb.OutboundCommand.FromString(msg.data), msg)

    async def _move_past(self, command: pb.OutboundCommand, msg: Msg) -> None:
        """This command is done for good (sent, refused or dead-lettered): later ones may go."""
        cursor_key = keys.ContactKeys(command.tenant, command.contact).outbound_cursor
        await self._advance(keys=[cursor_key], args=[msg.metadata.sequence.stream, self._settings.sent_key_ttl_s])

    async def _deliver(
        self, tenant: BotTenant, command: pb.OutboundCommand, msg: Msg, key: str, state: str | None
    ) -> None:
        """Call the Graph API once for the command; `state` is its key's value when handling began."""
        if state is not None:
            await self._already_handled(command, str(state))
            return
        whatsapp, limits = tenant.spec.whatsapp, tenant.spec.rate_limits
        if command.WhichOneof("body") == "mark_read":  # not a message: no pacing
            waited = await self._limiter.acquire(command.tenant, whatsapp.phone_number_id, limits.messages_per_second)
        else:
            contact = keys.ContactKeys(command.tenant, command.contact)
            waited = await self._limiter.send_to(contact, whatsapp.phone_number_id, limits)
        if waited > 1.0:
            await msg.in_progress()
        if not await self._redis.set(key, f"calling:{time.time():.3f}", nx=True, ex=self._settings.sent_key_ttl_s):
            await self._already_handled(command, str(await self._redis.get(key) or ""))
            return
        try:
            token = tenant.secrets.resolve(whatsapp.access_token, self._core.secrets_dir, self._core.is_development)
        except SecretUnavailable as error:
            await self._redis.delete(key)
            raise bus.RetryLater(f"access token unavailable: {error}") from error
        url = f"{whatsapp.graph_api_url.rstrip('/')}/{whatsapp.api_version}/{whatsapp.phone_number_id}/messages"
        started = time.perf_counter()
        with tracer.start_as_current_span("graph.messages send", kind=SpanKind.CLIENT) as span:
            span.set_attribute("zapflow.tenant", command.tenant)
            span.set_attribute("zapflow.command_id", command.command_id)
            try:
                async with self._http.post(
                    url, json=graph_payload(command), headers={"Authorization": f"Bearer {token}"}
                ) as response:
                    result = classify(response.status, await response.read(), response.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as error:
                result = classify_transport_error(error)
            span.set_attribute("zapflow.outcome", result.outcome.value)
        metrics.GRAPH_API_SECONDS.labels(command.tenant).observe(time.perf_counter() - started)
        await self._settle(command, key, result)

    async def _already_handled(self, command: pb.OutboundCommand, state: str) -> None:
        if state.startswith("calling:"):
            started = float(state.split(":", 1)[1])
            if time.time() - started < self._settings.send_lease_s:
                raise bus.RetryLater("another delivery of this command is calling the Graph API")
            metrics.OUTBOUND_REQUESTS.labels(command.tenant, Outcome.UNCERTAIN).inc()
            raise bus.Reject("uncertain: a previous attempt died during its Graph API call; not resent")
        metrics.DUPLICATES_DROPPED.labels(command.tenant, "outbound_key").inc()
        metrics.OUTBOUND_REQUESTS.labels(command.tenant, "duplicate").inc()

    async def _settle(self, command: pb.OutboundCommand, key: str, result: GraphResult) -> None:
        tenant = command.tenant
        if result.outcome is Outcome.RETRY:
            await self._redis.delete(key)
            metrics.OUTBOUND_REQUESTS.labels(tenant, "retried").inc()
            raise bus.RetryLater(f"Graph API {result.status_code} {result.error_code}", result.retry_after_s)
        if result.outcome is Outcome.UNCERTAIN:
            metrics.OUTBOUND_REQUESTS.labels(tenant, Outcome.UNCERTAIN).inc()
            raise bus.Reject(f"uncertain: {result.error_title}; not resent")
        if result.outcome is Outcome.SENT:
            await self._redis.set(key, f"sent:{result.wamid}", ex=self._settings.sent_key_ttl_s)
        else:
            await self._redis.set(key, f"failed:{result.error_code}", ex=self._settings.sent_key_ttl_s)
            if result.outcome is Outcome.WINDOW_CLOSED and result.status_code:
                metrics.WINDOW_VIOLATIONS.labels(tenant).inc()
            log.warning(
                "graph api refused a command",
                tenant=tenant,
                command_id=command.command_id,
                status=result.status_code,
                code=result.error_code,
                title=result.error_title,
            )
        metrics.OUTBOUND_REQUESTS.labels(tenant, result.outcome.value).inc()
        report = pb.OutboundResult(
            command_id=command.command_id,
            tenant=tenant,
            contact=command.contact,
            turn_id=command.turn_id,
            result=result.outcome.value,
            wamid=result.wamid,
            error_code=result.error_code,
            error_title=result.error_title,
            at=bus.now_timestamp(),
        )
        subject = catalogue.result_subject(tenant, command.contact)
        await bus.publish(self._js, subject, report, f"{command.command_id}:result")


def _outside_window(command: pb.OutboundCommand, last_customer: str | None) -> bool:
    """A free-form command whose customer's window is closed, or unknown to its producer and to Redis."""
    if not window.needs_window(command):
        return False
    closes = window.command_window_closes_at(command, float(last_customer) if last_customer is not None else None)
    return closes is None or closes <= datetime.now(UTC)
