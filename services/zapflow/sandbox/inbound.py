"""Customer messages: built by the web chat or given raw by tests, signed and sent to the gateway."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from zapflow.platform.logging import get_logger
from zapflow.sandbox.delivery import GatewayAnswer, WebhookDelivery
from zapflow.sandbox.meta import unix_timestamp
from zapflow.sandbox.numbers import SandboxNumber
from zapflow.sandbox.recording import InboundOrigin, Recorder

log = get_logger(__name__)

ReplyKind = Literal["button_reply", "list_reply"]


def _customer_message(number: SandboxNumber, wa_id: str, wamid: str, context_message_id: str | None) -> dict[str, Any]:
    message: dict[str, Any] = {"from": wa_id, "id": wamid, "timestamp": unix_timestamp()}
    if context_message_id is not None:
        # A reply to (or a tap on) one of the business's messages quotes it.
        message["context"] = {"from": number.display_phone_number, "id": context_message_id}
    return message


def customer_text(
    number: SandboxNumber, wa_id: str, wamid: str, text: str, context_message_id: str | None = None
) -> dict[str, Any]:
    """A text message from the customer, as it appears in value.messages[]."""
    message = _customer_message(number, wa_id, wamid, context_message_id)
    return {**message, "type": "text", "text": {"body": text}}


def customer_reply(
    number: SandboxNumber,
    wa_id: str,
    wamid: str,
    kind: ReplyKind,
    reply: dict[str, str],
    context_message_id: str | None,
) -> dict[str, Any]:
    """The customer tapping a reply button or picking a list row."""
    message = _customer_message(number, wa_id, wamid, context_message_id)
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


def _message_origins(payload: dict[str, Any]) -> Iterator[tuple[str, InboundOrigin]]:
    # Raw payloads from tests may be partial or deliberately odd: take what is well formed.
    for value in _change_values(payload):
        metadata = value.get("metadata")
        phone_number_id = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
        for message in _mappings(value.get("messages")):
            wamid, sender = message.get("id"), message.get("from")
            if isinstance(phone_number_id, str) and isinstance(wamid, str) and isinstance(sender, str):
                yield wamid, InboundOrigin(phone_number_id=phone_number_id, wa_id=sender)


class InboundRelay:
    """Delivers customer messages once and remembers them, so the bot's read receipts find them."""

    def __init__(self, recorder: Recorder, delivery: WebhookDelivery) -> None:
        self._recorder = recorder
        self._delivery = delivery

    async def forward(self, number: SandboxNumber, payload: dict[str, Any]) -> GatewayAnswer:
        """Raises GatewayUnreachable when the gateway gives no HTTP answer."""
        # Remembered first: the gateway may mark a message as read before answering the webhook.
        for wamid, origin in _message_origins(payload):
            self._recorder.remember_inbound(wamid, origin)
        answer = await self._delivery.deliver_once(number, payload)
        log.info("inbound webhook delivered", tenant=number.tenant, gateway_status=answer.status)
        return answer
