"""What every responder gets (a turn) and gives back (an answer).

The engine owns debounce, ordering, idempotency and publishing; a responder only decides
what to say. New responders and tools plug in here without touching the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from zapflow.tenants.model import BotTenant, ReplySpec
from zapflow.v1 import inbound_pb2
from zapflow.whatsapp.messages import HistoryEntry


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
    outcome: str  # rule | greeting | fallback | llm | faq | error_fallback | silent
    replies: tuple[ReplySpec, ...]
    rule: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Side effects a tool asked for (e.g. "handoff"); the engine and later services act on them.
    actions: tuple[str, ...] = field(default_factory=tuple)


# The action a responder adds to hand the conversation to a person: "handoff:<reason>:<detail>".
HANDOFF_ACTION = "handoff"
# The engine keeps this much of a model's or rule's own words about why.
HANDOFF_DETAIL_CHARS = 200


def handoff_action(reason: str, detail: str = "") -> str:
    return f"{HANDOFF_ACTION}:{reason}:{detail[:HANDOFF_DETAIL_CHARS]}"


def handoff_asked(actions: tuple[str, ...]) -> tuple[str, str] | None:
    """The (reason, detail) of the first handoff action, if the responder asked for one."""
    for action in actions:
        kind, _, rest = action.partition(":")
        if kind == HANDOFF_ACTION:
            reason, _, detail = rest.partition(":")
            return reason or "llm", detail
    return None


class Responder(Protocol):
    name: str

    async def answer(self, turn: TurnInput) -> Answer:
        """Decide the bot's answer to a turn; never raises for a customer-visible failure."""
        ...
