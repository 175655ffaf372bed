"""A customer opting out of the business's campaigns (STOP, PARAR, SAIR, CANCELAR, BAJA ...).

Only a message that is the keyword alone counts ("stop" or "STOP!", not "don't stop"), so a
customer's sentence is never taken for an opt-out. The bot confirms once; the recorder keeps the
opt-out for good (the turn's `opt_out` action), and campaigns never message the customer again.
"""

from __future__ import annotations

import functools
import re

from zapflow.conversation.rules import normalise
from zapflow.tenants.model import MessagingSpec
from zapflow.v1 import inbound_pb2
from zapflow.whatsapp.messages import message_text

OPT_OUT_ACTION = "opt_out"
OPTED_OUT_OUTCOME = "opted_out"


def asked_to_opt_out(spec: MessagingSpec, messages: tuple[inbound_pb2.InboundMessage, ...]) -> bool:
    """A message of the burst is one of the tenant's opt-out keywords, alone."""
    keywords = _folded(tuple(spec.opt_out_keywords))
    return any(_bare(message_text(message)) in keywords for message in messages)


@functools.lru_cache(maxsize=1024)
def _folded(keywords: tuple[str, ...]) -> frozenset[str]:
    return frozenset(normalise(keyword) for keyword in keywords)


def _bare(text: str) -> str:
    return re.sub(r"[^\w]+", " ", normalise(text)).strip()
