"""Webhook payloads in the shapes of Meta's WhatsApp Cloud API documentation."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

from zapflow.whatsapp.signature import SIGNATURE_HEADER, sign

_sequence = itertools.count(1)


def new_wamid() -> str:
    return f"wamid.TEST{next(_sequence):08d}{time.time_ns() % 10**9:09d}"


def now() -> str:
    return str(int(time.time()))


def notification(
    phone_number_id: str,
    messages: list[dict[str, Any]] | None = None,
    statuses: list[dict[str, Any]] | None = None,
    contacts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": phone_number_id},
    }
    if contacts is not None:
        value["contacts"] = contacts
    if messages is not None:
        value["messages"] = messages
    if statuses is not None:
        value["statuses"] = statuses
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": value}]}],
    }


def contact(wa_id: str, name: str = "Test Customer") -> dict[str, Any]:
    return {"profile": {"name": name}, "wa_id": wa_id}


def text(sender: str, body: str, wamid: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "from": sender,
        "id": wamid or new_wamid(),
        "timestamp": now(),
        "type": "text",
        "text": {"body": body},
        **extra,
    }


def status(recipient: str, wamid: str, state: str, errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"id": wamid, "status": state, "timestamp": now(), "recipient_id": recipient}
    if errors:
        found["errors"] = errors
    return found


def button_reply(sender: str, button_id: str, title: str) -> dict[str, Any]:
    return {
        "from": sender,
        "id": new_wamid(),
        "timestamp": now(),
        "type": "interactive",
        "interactive": {"type": "button_reply", "button_reply": {"id": button_id, "title": title}},
    }


def every_inbound_type(sender: str) -> dict[str, dict[str, Any]]:
    """One message of each type Meta documents, keyed by type."""

    def base(kind: str, **content: Any) -> dict[str, Any]:
        return {"from": sender, "id": new_wamid(), "timestamp": now(), "type": kind, **content}

    media = {"mime_type": "image/jpeg", "sha256": "abc123", "id": "media-1"}
    return {
        "text": base("text", text={"body": "hello"}),
        "image": base("image", image={**media, "caption": "a photo"}),
        "video": base("video", video={**media, "mime_type": "video/mp4"}),
        "document": base("document", document={**media, "filename": "invoice.pdf", "caption": "my invoice"}),
        "audio": base("audio", audio={"mime_type": "audio/ogg; codecs=opus", "id": "media-2", "voice": True}),
        "sticker": base("sticker", sticker={"mime_type": "image/webp", "id": "media-3", "animated": False}),
        "reaction": base("reaction", reaction={"message_id": "wamid.REACTED", "emoji": "👍"}),
        "location": base(
            "location",
            location={"latitude": -23.55, "longitude": -46.63, "name": "Paulista", "address": "Av. Paulista"},
        ),
        "contacts": base(
            "contacts",
            contacts=[
                {
                    "name": {"formatted_name": "Ana Souza", "first_name": "Ana"},
                    "phones": [{"phone": "+55 11 99999-0000", "wa_id": "5511999990000", "type": "CELL"}],
                    "emails": [{"email": "ana@example.com", "type": "WORK"}],
                }
            ],
        ),
        "order": base(
            "order",
            order={
                "catalog_id": "cat-1",
                "text": "please deliver fast",
                "product_items": [
                    {"product_retailer_id": "sku-1", "quantity": 2, "item_price": "9.90", "currency": "BRL"}
                ],
            },
        ),
        "interactive": base(
            "interactive",
            interactive={
                "type": "list_reply",
                "list_reply": {"id": "row-1", "title": "Prices", "description": "Plans and billing"},
            },
        ),
        "button": base("button", button={"payload": "CONFIRM", "text": "Confirm"}),
        "system": base(
            "system",
            system={"body": "User changed number", "new_wa_id": "5511888880000", "type": "user_changed_number"},
        ),
        "unsupported": base(
            "unsupported", errors=[{"code": 131051, "title": "Message type unknown", "message": "Message type unknown"}]
        ),
    }


def signed(payload: dict[str, Any], app_secret: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    return body, {SIGNATURE_HEADER: sign(body, app_secret), "Content-Type": "application/json"}
