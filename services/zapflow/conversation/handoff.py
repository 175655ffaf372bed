"""When a turn goes to a person instead of being answered by the bot (docs/handoff.md).

A turn is handed over when the customer asks for a person (the tenant's keywords, or a rule with
`handoff: true`, e.g. a button), when the model calls `handoff_to_human`, or when the responder
missed (faq) or failed too many turns in a row. The streaks live in the contact's conversation
hash; a turn that hands over starts them again.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from zapflow.conversation.responder import Answer, handoff_asked
from zapflow.conversation.rules import normalise
from zapflow.tenants.model import HandoffSpec
from zapflow.v1 import inbound_pb2
from zapflow.whatsapp.messages import message_text

CUSTOMER_ASKED = "customer_asked"
FAQ_MISSES = "faq_misses"
RESPONDER_FAILURES = "responder_failures"
# The faq responder's outcome when nothing in the knowledge base answered.
FAQ_MISS_OUTCOME = "fallback"
FAILURE_OUTCOME = "error_fallback"


@dataclass(frozen=True)
class Streaks:
    """Turns in a row the faq responder could not answer, and the responder failed."""

    faq_misses: int = 0
    failures: int = 0


@dataclass(frozen=True)
class HandoffAsk:
    reason: str
    detail: str = ""


def asked_by_customer(spec: HandoffSpec, messages: tuple[inbound_pb2.InboundMessage, ...]) -> HandoffAsk | None:
    """The customer asked for a person in words, in any message of the burst."""
    if not spec.enabled or not spec.keywords:
        return None
    pattern, spelled = _keywords(tuple(spec.keywords))
    for message in reversed(messages):
        text = message_text(message)
        found = pattern.search(normalise(text)) if text else None
        if found is not None:
            return HandoffAsk(CUSTOMER_ASKED, spelled[found.group(0)])
    return None


@functools.lru_cache(maxsize=1024)
def _keywords(keywords: tuple[str, ...]) -> tuple[re.Pattern[str], dict[str, str]]:
    """One pattern for a tenant's keywords (every turn checks them), and each match's keyword as the spec spells it.

    The longest first, so that a phrase wins over a word inside it; whole words only, as rule keywords.
    """
    spelled = {normalise(keyword): keyword for keyword in keywords}
    alternatives = "|".join(re.escape(folded) for folded in sorted(spelled, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)"), spelled


def after_answer(
    spec: HandoffSpec, responder: str, answer: Answer, streaks: Streaks
) -> tuple[HandoffAsk | None, Streaks]:
    """Whether the bot's answer hands the conversation over, and the streaks it leaves."""
    missed = responder == "faq" and answer.outcome == FAQ_MISS_OUTCOME
    failed = answer.outcome == FAILURE_OUTCOME
    after = Streaks(streaks.faq_misses + 1 if missed else 0, streaks.failures + 1 if failed else 0)
    if not spec.enabled:
        return None, after
    asked = handoff_asked(answer.actions)
    if asked is not None:
        return HandoffAsk(*asked), Streaks()
    if spec.after_faq_misses and after.faq_misses >= spec.after_faq_misses:
        return HandoffAsk(FAQ_MISSES, str(after.faq_misses)), Streaks()
    if spec.after_failures and after.failures >= spec.after_failures:
        return HandoffAsk(RESPONDER_FAILURES, str(after.failures)), Streaks()
    return None, after
