"""The web chat's live feed: what the bot does to a contact, fanned out to the open chat pages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from zapflow.platform.fanout import Fanout

# "message": the bot sent something; "read": the bot marked a customer message as read;
# "typing": the bot showed the typing indicator.
ChatEventKind = Literal["message", "read", "typing"]


@dataclass(frozen=True)
class ChatEvent:
    kind: ChatEventKind
    data: dict[str, Any]


class ChatHub(Fanout[tuple[str, str], ChatEvent]):
    """Subscribers per (phone number id, contact wa_id)."""
