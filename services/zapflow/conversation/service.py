"""The conversation service's consumer: one inbound message in, the bot's answer out."""

from __future__ import annotations

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from redis.asyncio import Redis

from zapflow.conversation.rules import answer, reply_command
from zapflow.conversation.settings import ConversationSettings
from zapflow.core import bus, metrics
from zapflow.core.logging import get_logger
from zapflow.core.registry import TenantRegistry
from zapflow.core.state import tenant_key
from zapflow.v1 import inbound_pb2, outbound_pb2, turn_pb2

log = get_logger(__name__)

INBOUND_CONSUMER = bus.ConsumerSpec(
    stream=bus.INBOUND,
    durable="conversation",
    filter_subject="zf.in.>",
    service="conversation",
)

# Types that are events about the chat rather than something to answer.
SILENT_TYPES = frozenset({"reaction", "system", "unsupported"})


class ConversationHandler:
    def __init__(
        self, js: JetStreamContext, redis: Redis, registry: TenantRegistry, settings: ConversationSettings
    ) -> None:
        self._js = js
        self._redis = redis
        self._registry = registry
        self._settings = settings

    async def handle(self, message: inbound_pb2.InboundMessage, msg: Msg) -> None:
        tenant = self._registry.by_name(message.tenant)
        if tenant is None:
            raise bus.RetryLater(f"tenant {message.tenant} is not in the registry (yet)")
        done_key = tenant_key(message.tenant, "msg", message.wamid)
        if await self._redis.exists(done_key):
            metrics.DUPLICATES_DROPPED.labels(message.tenant, "message_key").inc()
            return
        if message.type in SILENT_TYPES:
            metrics.REPLIES.labels(message.tenant, f"silent_{message.type}").inc()
            await self._redis.set(done_key, "silent", ex=self._settings.message_key_ttl_s)
            return

        seen_key = tenant_key(message.tenant, "seen", message.contact)
        first_contact = not await self._redis.exists(seen_key)
        result = answer(tenant.spec.bot, (message,), first_contact)
        subject = bus.outbound_subject(message.tenant, message.contact)
        # Until the engine has turns of several messages, a turn is one message: its wamid.
        turn_id = message.wamid
        command_ids: list[str] = []
        if self._settings.typing_indicator:
            read = outbound_pb2.OutboundCommand(
                command_id=f"{turn_id}:read",
                tenant=message.tenant,
                contact=message.contact,
                turn_id=turn_id,
                created_at=bus.now_timestamp(),
                mark_read=outbound_pb2.MarkRead(wamid=message.wamid, typing=True),
            )
            await bus.publish(self._js, subject, read, read.command_id)
        for index, reply in enumerate(result.replies):
            command = outbound_pb2.OutboundCommand(
                command_id=f"{turn_id}:{index}",
                tenant=message.tenant,
                contact=message.contact,
                turn_id=turn_id,
                created_at=bus.now_timestamp(),
            )
            await bus.publish(self._js, subject, reply_command(reply, command), command.command_id)
            command_ids.append(command.command_id)
        turn = turn_pb2.Turn(
            turn_id=turn_id,
            tenant=message.tenant,
            contact=message.contact,
            inbound_wamids=[message.wamid],
            responder=tenant.spec.bot.responder,
            outcome="answered" if result.outcome != "fallback" else "fallback",
            rule=result.rule,
            command_ids=command_ids,
            started_at=message.received_at,
            answered_at=bus.now_timestamp(),
        )
        await bus.publish(self._js, bus.event_subject("turn", message.tenant), turn, turn_id)
        # Marked done only after the answer is on the bus: a crash before this line means a
        # redelivery whose publishes collapse on their dedup ids.
        await self._redis.set(done_key, "answered", ex=self._settings.message_key_ttl_s)
        await self._redis.set(seen_key, "1")
        metrics.REPLIES.labels(message.tenant, result.outcome).inc()
        log.info("answered", tenant=message.tenant, outcome=result.outcome, rule=result.rule, turn_id=turn_id)
