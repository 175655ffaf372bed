"""What the store and the conversation service both make of inbound messages.

Here rather than in either, so that the store does not import a service: the words of a
message, its one-line rendering, the types that are chat events, and a history entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from zapflow.v1 import inbound_pb2

# Events about the chat rather than words of the customer: the conversation engine does not
# answer them, and they are not part of the history a model is shown.
CHAT_EVENT_TYPES = ("reaction", "system", "unsupported")


@dataclass(frozen=True)
class HistoryEntry:
    """One earlier exchange of the conversation, oldest first in TurnInput.history."""

    role: Literal["customer", "bot"]
    text: str


def message_text(message: inbound_pb2.InboundMessage) -> str:
    """The words a customer wrote, whatever the message type (for rule matching)."""
    content = message.WhichOneof("content")
    if content == "text":
        return message.text.body
    if content == "media":
        return message.media.caption
    if content == "interactive":
        return message.interactive.title
    if content == "location":
        return " ".join(p for p in (message.location.name, message.location.address) if p)
    if content == "order":
        return message.order.text
    return ""


def describe(message: inbound_pb2.InboundMessage) -> str:
    """A one-line rendering of any message for a language model's context."""
    content = message.WhichOneof("content")
    if content == "text":
        return message.text.body
    if content == "media":
        caption = f": {message.media.caption}" if message.media.caption else ""
        kind = "voice note" if message.media.voice else message.media.kind
        return f"[{kind}{caption}]"
    if content == "location":
        where = message.location
        return f"[location {where.name} {where.address} ({where.latitude:.5f}, {where.longitude:.5f})]".replace(
            "  ", " "
        )
    if content == "interactive":
        return f"[tapped: {message.interactive.title}]"
    if content == "reaction":
        return f"[reacted {message.reaction.emoji}]"
    if content == "contacts":
        return "[shared contact: " + ", ".join(c.formatted_name for c in message.contacts.contacts) + "]"
    if content == "order":
        items = ", ".join(f"{i.quantity}x {i.product_retailer_id}" for i in message.order.items)
        return f"[order: {items}] {message.order.text}".strip()
    return f"[{message.type} message]"
