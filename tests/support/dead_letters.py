"""Dead letters filed the way the gateway files the webhook parts it cannot read."""

from __future__ import annotations

from nats.js import JetStreamContext

from zapflow.gateway.webhook import dead_letter_of
from zapflow.platform import bus
from zapflow.whatsapp.webhook import Refused


async def file_webhook_part(
    js: JetStreamContext, tenant: str, contact: str | None, payload: bytes, reason: str, status: bool = False
) -> int:
    """A webhook part the gateway could not read, dead-lettered as the gateway does; its stream sequence."""
    part = Refused(where="test", reason=reason, raw=payload, contact=contact, is_status=status)
    subject, letter = dead_letter_of(tenant, part, limit=len(payload) + 1)
    return (await bus.publish(js, subject, letter, letter.message_id)).seq
