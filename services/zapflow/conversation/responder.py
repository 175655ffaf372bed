"""What every responder gets (a turn) and gives back (an answer).

The engine owns debounce, ordering, idempotency and publishing; a responder only decides
what to say. New responders and tools plug in here without touching the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from zapflow.tenants.model import BotTenant, ReplySpec
from zapflow.v1 import inbound_pb2


@dataclass(frozen=True)
class HistoryEntry:
    """One earlier exchange of the conversation, oldest first in TurnInput.history."""

    role: Literal["customer", "bot"]
    text: str


@dataclass(frozen=True)
class TurnInput:
    turn_id: str
    tenant: BotTenant
    contact: str
    messages: tuple[inbound_pb2.InboundMessage, ...]  # the burst, in arrival order
    history: tuple[HistoryEntry, ...] = ()
    first_contact: bool = False


@dataclass(frozen=True)
class Answer:
    outcome: str  # rule | greeting | fallback | llm | error_fallback | silent
    replies: tuple[ReplySpec, ...]
    rule: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Side effects a tool asked for (e.g. "handoff"); the engine and later services act on them.
    actions: tuple[str, ...] = field(default_factory=tuple)


class Responder(Protocol):
    name: str

    async def answer(self, turn: TurnInput) -> Answer:
        """Decide the bot's answer to a turn; never raises for a customer-visible failure."""
        ...


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
