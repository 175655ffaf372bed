"""Customer messages: built by the web chat or given raw by tests, signed and sent to the gateway."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from zapflow.platform.logging import get_logger
from zapflow.sandbox.delivery import GatewayAnswer, WebhookDelivery
from zapflow.sandbox.meta import to_wa_id
from zapflow.sandbox.numbers import SandboxNumber
from zapflow.sandbox.recording import InboundOrigin, Recorder
from zapflow.sandbox.rules import SendingRules

log = get_logger(__name__)

ReplyKind = Literal["button_reply", "list_reply"]
_UNIX_SECONDS = re.compile(r"^[0-9]{1,12}$")


def _customer_message(
    number: SandboxNumber, wa_id: str, wamid: str, sent_at: int, context_message_id: str | None
) -> dict[str, Any]:
    # Meta sends timestamps as strings of whole seconds.
    message: dict[str, Any] = {"from": wa_id, "id": wamid, "timestamp": str(sent_at)}
    if context_message_id is not None:
        # A reply to (or a tap on) one of the business's messages quotes it.
        message["context"] = {"from": number.display_phone_number, "id": context_message_id}
    return message


def customer_text(
    number: SandboxNumber, wa_id: str, wamid: str, sent_at: int, text: str, context_message_id: str | None = None
) -> dict[str, Any]:
    """A text message the customer sent at `sent_at` (Unix seconds), as it appears in value.messages[]."""
    message = _customer_message(number, wa_id, wamid, sent_at, context_message_id)
    return {**message, "type": "text", "text": {"body": text}}


def customer_reply(
    number: SandboxNumber,
    wa_id: str,
    wamid: str,
    sent_at: int,
    kind: ReplyKind,
    reply: dict[str, str],
    context_message_id: str | None,
) -> dict[str, Any]:
    """The customer tapping a reply button or picking a list row."""
    message = _customer_message(number, wa_id, wamid, sent_at, context_message_id)
    return {**message, "type": "interactive", "interactive": {"type": kind, kind: reply}}


def _mappings(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, list):
        yield from (item for item in value if isinstance(item, dict))


def _change_values(payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for entry in _mappings(payload.get("entry")):
        for change in _mappings(entry.get("changes")):
            if isinstance(value := change.get("value"), dict):
                yield value


def addressed_phone_number_id(payload: dict[str, Any]) -> str | None:
    """The phone number id of the first change's metadata: whose app secret signs the payload."""
    for value in _change_values(payload):
        metadata = value.get("metadata")
        if isinstance(metadata, dict) and isinstance(found := metadata.get("phone_number_id"), str):
            return found
    return None


@dataclass(frozen=True)
class _CustomerMessage:
    wamid: str
    origin: InboundOrigin
    timestamp: str | None


def _customer_messages(payload: dict[str, Any]) -> Iterator[_CustomerMessage]:
    # Raw payloads from tests may be partial or deliberately odd: take what is well formed.
    for value in _change_values(payload):
        metadata = value.get("metadata")
        phone_number_id = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
        for message in _mappings(value.get("messages")):
            wamid, sender, timestamp = message.get("id"), message.get("from"), message.get("timestamp")
            if isinstance(phone_number_id, str) and isinstance(wamid, str) and isinstance(sender, str):
                origin = InboundOrigin(phone_number_id=phone_number_id, wa_id=sender)
                yield _CustomerMessage(wamid, origin, timestamp if isinstance(timestamp, str) else None)


def _sent_at(timestamp: str | None, now: float) -> float:
    """When the customer sent a message: its timestamp if it is one, never later than now (a timestamp from
    the future would stretch the window past 24 hours)."""
    if timestamp is None or not _UNIX_SECONDS.match(timestamp):
        return now
    return min(float(timestamp), now)


class InboundRelay:
    """Delivers customer messages once and remembers them: the bot's read receipts find them, and each
    opens its customer's 24-hour window."""

    def __init__(self, recorder: Recorder, rules: SendingRules, delivery: WebhookDelivery) -> None:
        self._recorder = recorder
        self._rules = rules
        self._delivery = delivery

    async def forward(self, number: SandboxNumber, payload: dict[str, Any]) -> GatewayAnswer:
        """Raises GatewayUnreachable when the gateway gives no HTTP answer."""
        # Remembered first: the gateway may mark a message as read, or answer it, before its
        # webhook returns. The customer wrote whatever the gateway answers: Meta would retry the
        # webhook for days, and the window opened when the message was sent.
        now = self._rules.now()
        for message in _customer_messages(payload):
            self._recorder.remember_inbound(message.wamid, message.origin)
            wa_id = to_wa_id(message.origin.wa_id)
            if wa_id is not None:
                self._rules.customer_wrote(message.origin.phone_number_id, wa_id, _sent_at(message.timestamp, now))
        answer = await self._delivery.deliver_once(number, payload)
        log.info("inbound webhook delivered", tenant=number.tenant, gateway_status=answer.status)
        return answer
