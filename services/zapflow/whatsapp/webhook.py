"""Meta's webhook payloads, normalised into the protobuf events zapflow publishes."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from zapflow.v1 import inbound_pb2 as pb

MEDIA_TYPES = ("image", "video", "document", "audio", "sticker")
_PHONE_NUMBER_ID = re.compile(rb'"phone_number_id"\s*:\s*"([0-9]{1,32})"')


class PayloadError(ValueError):
    """A webhook body that is not a WhatsApp Business Account notification we can read."""


@dataclass
class ParsedWebhook:
    messages: list[pb.InboundMessage] = field(default_factory=list)
    statuses: list[pb.StatusUpdate] = field(default_factory=list)
    phone_number_ids: set[str] = field(default_factory=set)
    # Changes of other fields (template status, account updates...) are not for the bot.
    ignored_changes: int = 0


def phone_number_ids_hint(body: bytes) -> set[str]:
    """The phone_number_ids a raw body claims, found without parsing it.

    Used only to pick which app secrets to try before the signature is checked; the parsed
    payload must later agree with the secret that verified.
    """
    return {m.decode() for m in _PHONE_NUMBER_ID.findall(body)}


def _timestamp(value: Any, where: str) -> Timestamp:
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        raise PayloadError(f"{where}.timestamp must be a unix time, got {value!r}") from None
    stamp = Timestamp()
    stamp.FromSeconds(seconds)
    return stamp


def _require(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, dict):
        raise PayloadError(f"{where} must be an object")
    if key not in mapping:
        raise PayloadError(f"{where}.{key} is missing")
    return mapping[key]


def _as_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise PayloadError(f"{where} must be a list")
    return value


def _object(message: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    found = message.get(key)
    if not isinstance(found, dict):
        raise PayloadError(f"{where}.{key} must be an object for type {key}")
    return found


def _fill_content(out: pb.InboundMessage, message: dict[str, Any], where: str) -> None:
    kind = out.type
    if kind == "text":
        out.text.body = str(_object(message, "text", where).get("body", ""))
    elif kind in MEDIA_TYPES:
        media = _object(message, kind, where)
        out.media.kind = kind
        out.media.media_id = str(media.get("id", ""))
        out.media.mime_type = str(media.get("mime_type", ""))
        out.media.sha256 = str(media.get("sha256", ""))
        out.media.caption = str(media.get("caption", ""))
        out.media.filename = str(media.get("filename", ""))
        out.media.voice = bool(media.get("voice", False))
        out.media.animated = bool(media.get("animated", False))
    elif kind == "reaction":
        reaction = _object(message, "reaction", where)
        out.reaction.message_id = str(reaction.get("message_id", ""))
        out.reaction.emoji = str(reaction.get("emoji", ""))
    elif kind == "location":
        location = _object(message, "location", where)
        try:
            out.location.latitude = float(location.get("latitude", 0.0))
            out.location.longitude = float(location.get("longitude", 0.0))
        except (TypeError, ValueError):
            raise PayloadError(f"{where}.location needs numeric latitude and longitude") from None
        out.location.name = str(location.get("name", ""))
        out.location.address = str(location.get("address", ""))
        out.location.url = str(location.get("url", ""))
    elif kind == "contacts":
        for i, shared in enumerate(_as_list(message.get("contacts"), f"{where}.contacts")):
            if not isinstance(shared, dict):
                raise PayloadError(f"{where}.contacts[{i}] must be an object")
            out.contacts.contacts.append(
                pb.SharedContact(
                    formatted_name=str((shared.get("name") or {}).get("formatted_name", "")),
                    phones=[str(p.get("phone", p.get("wa_id", ""))) for p in shared.get("phones", [])],
                    emails=[str(e.get("email", "")) for e in shared.get("emails", [])],
                )
            )
    elif kind == "order":
        order = _object(message, "order", where)
        out.order.catalog_id = str(order.get("catalog_id", ""))
        out.order.text = str(order.get("text", ""))
        for item in order.get("product_items", []):
            out.order.items.append(
                pb.OrderItem(
                    product_retailer_id=str(item.get("product_retailer_id", "")),
                    quantity=int(item.get("quantity", 0)),
                    item_price=str(item.get("item_price", "")),
                    currency=str(item.get("currency", "")),
                )
            )
    elif kind == "interactive":
        interactive = _object(message, "interactive", where)
        reply_kind = str(interactive.get("type", ""))
        reply = interactive.get(reply_kind)
        if not isinstance(reply, dict):
            raise PayloadError(f"{where}.interactive.{reply_kind or 'type'} is missing")
        out.interactive.kind = reply_kind
        # Flow replies (nfm_reply) carry a name and a JSON answer instead of an id and a title.
        out.interactive.id = str(reply.get("id", reply.get("name", "")))
        out.interactive.title = str(reply.get("title", reply.get("body", "")))
        out.interactive.description = str(reply.get("description", reply.get("response_json", "")))
    elif kind == "button":
        button = _object(message, "button", where)
        out.interactive.kind = "button"
        out.interactive.id = str(button.get("payload", ""))
        out.interactive.title = str(button.get("text", ""))
    elif kind == "system":
        system = _object(message, "system", where)
        out.system.kind = str(system.get("type", ""))
        out.system.body = str(system.get("body", ""))
        out.system.new_wa_id = str(system.get("new_wa_id", system.get("wa_id", "")))
    else:
        # "unsupported", and any type Meta adds later: kept, never refused.
        errors = message.get("errors", [])
        out.unsupported.error_codes.extend(int(e.get("code", 0)) for e in errors if isinstance(e, dict))
        out.unsupported.reason = (
            "; ".join(str(e.get("title") or e.get("message") or "") for e in errors if isinstance(e, dict))
            or f"type {kind} is not handled by zapflow"
        )


def _parse_message(message: Any, metadata: dict[str, str], names: dict[str, str], where: str) -> pb.InboundMessage:
    contact = str(_require(message, "from", where))
    out = pb.InboundMessage(
        phone_number_id=metadata["phone_number_id"],
        contact=contact,
        contact_name=names.get(contact, ""),
        wamid=str(_require(message, "id", where)),
        sent_at=_timestamp(_require(message, "timestamp", where), where),
        type=str(_require(message, "type", where)),
        raw_json=json.dumps(message, separators=(",", ":"), ensure_ascii=False),
    )
    if not out.wamid:
        raise PayloadError(f"{where}.id is empty")
    if not contact.isdigit():
        raise PayloadError(f"{where}.from must be a WhatsApp id (digits)")
    context = message.get("context")
    if isinstance(context, dict):
        out.quoted_wamid = str(context.get("id", ""))
        out.forwarded = bool(context.get("forwarded") or context.get("frequently_forwarded"))
    _fill_content(out, message, where)
    return out


def _parse_status(status: Any, metadata: dict[str, str], where: str) -> pb.StatusUpdate:
    out = pb.StatusUpdate(
        phone_number_id=metadata["phone_number_id"],
        contact=str(_require(status, "recipient_id", where)),
        wamid=str(_require(status, "id", where)),
        status=str(_require(status, "status", where)),
        at=_timestamp(_require(status, "timestamp", where), where),
        conversation_id=str((status.get("conversation") or {}).get("id", "")),
        pricing_category=str((status.get("pricing") or {}).get("category", "")),
    )
    for error in status.get("errors", []):
        if isinstance(error, dict):
            out.errors.append(
                pb.StatusError(
                    code=int(error.get("code", 0)),
                    title=str(error.get("title", "")),
                    detail=str((error.get("error_data") or {}).get("details", error.get("message", ""))),
                )
            )
    return out


def parse_webhook(payload: Any) -> ParsedWebhook:
    """Every message and status of a notification; raises PayloadError naming what is wrong."""
    if not isinstance(payload, dict):
        raise PayloadError("the body must be a JSON object")
    if payload.get("object") != "whatsapp_business_account":
        raise PayloadError("object must be whatsapp_business_account")
    parsed = ParsedWebhook()
    for e, entry in enumerate(_as_list(_require(payload, "entry", "body"), "entry")):
        for c, change in enumerate(_as_list(_require(entry, "changes", f"entry[{e}]"), f"entry[{e}].changes")):
            where = f"entry[{e}].changes[{c}]"
            if not isinstance(change, dict):
                raise PayloadError(f"{where} must be an object")
            if change.get("field") != "messages":
                parsed.ignored_changes += 1
                continue
            value = _require(change, "value", where)
            metadata = _require(value, "metadata", f"{where}.value")
            phone_number_id = str(_require(metadata, "phone_number_id", f"{where}.value.metadata"))
            parsed.phone_number_ids.add(phone_number_id)
            meta = {"phone_number_id": phone_number_id}
            names = {
                str(contact.get("wa_id", "")): str((contact.get("profile") or {}).get("name", ""))
                for contact in value.get("contacts", [])
                if isinstance(contact, dict)
            }
            for m, message in enumerate(_as_list(value.get("messages", []), f"{where}.value.messages")):
                parsed.messages.append(_parse_message(message, meta, names, f"{where}.value.messages[{m}]"))
            for s, status in enumerate(_as_list(value.get("statuses", []), f"{where}.value.statuses")):
                parsed.statuses.append(_parse_status(status, meta, f"{where}.value.statuses[{s}]"))
    return parsed
