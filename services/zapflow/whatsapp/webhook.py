"""Meta's webhook payloads, normalised into the protobuf events zapflow publishes.

A notification is read level by level with the models of payload.py. A part that does not
follow Meta's shapes (a message, a status, a change) is returned as `Refused`, with where it
was, why and its raw JSON, and the rest of the notification is read on: the gateway publishes
what it could read and dead-letters the rest. Only a body whose envelope cannot be read at all
raises PayloadError.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pydantic_core
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, ValidationError

from zapflow.v1 import inbound_pb2 as pb
from zapflow.whatsapp import payload as meta
from zapflow.whatsapp.bounded import PayloadError

_PHONE_NUMBER_ID = re.compile(rb'"phone_number_id"\s*:\s*"([0-9]{1,32})"')
_WA_ID = re.compile(meta.WA_ID_PATTERN)
# The errors of one part shown in its reason: enough to find the field, short enough to read.
_REASONS_SHOWN = 3
ModelT = TypeVar("ModelT", bound=BaseModel)

__all__ = ["ParsedWebhook", "PayloadError", "Refused", "parse_webhook", "phone_number_ids_hint"]


@dataclass(frozen=True)
class Refused:
    """A part of a notification that could not be read: dead-lettered by the gateway."""

    where: str
    reason: str
    raw: bytes
    # What could be read of it: whose it is and about whom, when that much was readable.
    phone_number_id: str | None = None
    contact: str | None = None
    is_status: bool = False


@dataclass
class ParsedWebhook:
    messages: list[pb.InboundMessage] = field(default_factory=list)
    statuses: list[pb.StatusUpdate] = field(default_factory=list)
    phone_number_ids: set[str] = field(default_factory=set)
    refused: list[Refused] = field(default_factory=list)
    # Changes of other fields (template status, account updates...) are not for the bot.
    ignored_changes: int = 0
    # Message types and fields zapflow does not know: kept in the raw JSON and counted.
    unknown_types: list[str] = field(default_factory=list)
    unknown_fields: list[str] = field(default_factory=list)


def phone_number_ids_hint(body: bytes) -> set[str]:
    """The phone_number_ids a raw body claims, found without parsing it.

    Used only to pick which app secrets to try before the signature is checked; the parsed
    payload must later agree with the secret that verified.
    """
    return {m.decode() for m in _PHONE_NUMBER_ID.findall(body)}


def raw_json(part: Any) -> bytes:
    """The part as compact UTF-8 JSON (pydantic-core's encoder: several times the standard library's speed)."""
    return pydantic_core.to_json(part)


def _why(error: ValidationError) -> str:
    problems = error.errors(include_url=False, include_input=False)
    shown = []
    for problem in problems[:_REASONS_SHOWN]:
        where = ".".join(str(step) for step in problem["loc"])
        shown.append(f"{where}: {problem['msg']}" if where else str(problem["msg"]))
    more = len(problems) - len(shown)
    return "; ".join(shown) + (f" (and {more} more)" if more > 0 else "")


def _timestamp(seconds: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromSeconds(seconds)
    return stamp


def _readable_id(part: Any, key: str) -> str | None:
    """The part's contact id when it is readable, so its dead letter can be erased with the contact."""
    found = part.get(key) if isinstance(part, dict) else None
    return found if isinstance(found, str) and _WA_ID.match(found) else None


def _fill_content(out: pb.InboundMessage, message: meta.Message) -> None:
    kind = message.type
    if message.text is not None and kind == "text":
        out.text.body = message.text.body
    elif kind in meta.MEDIA_TYPES:
        media: meta.Media = getattr(message, kind)
        out.media.kind = kind
        out.media.media_id = media.id
        out.media.mime_type = media.mime_type
        out.media.sha256 = media.sha256
        out.media.caption = media.caption
        out.media.filename = media.filename
        out.media.voice = media.voice
        out.media.animated = media.animated
    elif message.reaction is not None and kind == "reaction":
        out.reaction.message_id = message.reaction.message_id
        out.reaction.emoji = message.reaction.emoji
    elif message.location is not None and kind == "location":
        where = message.location
        out.location.latitude = where.latitude
        out.location.longitude = where.longitude
        out.location.name = where.name
        out.location.address = where.address
        out.location.url = where.url
    elif message.contacts is not None and kind == "contacts":
        for shared in message.contacts:
            out.contacts.contacts.append(
                pb.SharedContact(
                    formatted_name=shared.name.formatted_name if shared.name else "",
                    phones=[phone.phone or phone.wa_id for phone in shared.phones],
                    emails=[email.email for email in shared.emails],
                )
            )
    elif message.order is not None and kind == "order":
        out.order.catalog_id = message.order.catalog_id
        out.order.text = message.order.text
        for item in message.order.product_items:
            out.order.items.append(
                pb.OrderItem(
                    product_retailer_id=item.product_retailer_id,
                    quantity=item.quantity,
                    item_price=item.item_price,
                    currency=item.currency,
                )
            )
    elif message.interactive is not None and kind == "interactive":
        out.interactive.kind = message.interactive.type
        reply = message.interactive.reply()
        if reply is not None:
            # Flow replies (nfm_reply) carry a name and a JSON answer instead of an id and a title.
            out.interactive.id = reply.id or reply.name
            out.interactive.title = reply.title or reply.body
            out.interactive.description = reply.description or reply.response_json
    elif message.button is not None and kind == "button":
        out.interactive.kind = "button"
        out.interactive.id = message.button.payload
        out.interactive.title = message.button.text
    elif message.system is not None and kind == "system":
        out.system.kind = message.system.type
        out.system.body = message.system.body
        out.system.new_wa_id = message.system.new_wa_id or message.system.wa_id
    else:
        # "unsupported", and any type Meta adds later: kept, never refused.
        out.unsupported.error_codes.extend(error.code for error in message.errors)
        out.unsupported.reason = "; ".join(
            error.title or error.message for error in message.errors if error.title or error.message
        ) or (f"type {kind} is not handled by zapflow")


def _message(message: meta.Message, phone_number_id: str, names: dict[str, str], raw: str) -> pb.InboundMessage:
    out = pb.InboundMessage(
        phone_number_id=phone_number_id,
        contact=message.sender,
        contact_name=names.get(message.sender, ""),
        wamid=message.id,
        sent_at=_timestamp(message.timestamp),
        type=message.type,
        raw_json=raw,
    )
    if message.context is not None:
        out.quoted_wamid = message.context.id
        out.forwarded = message.context.forwarded or message.context.frequently_forwarded
    _fill_content(out, message)
    return out


def _status(status: meta.Status, phone_number_id: str, raw: str) -> pb.StatusUpdate:
    return pb.StatusUpdate(
        phone_number_id=phone_number_id,
        contact=status.recipient_id,
        wamid=status.id,
        status=status.status,
        at=_timestamp(status.timestamp),
        conversation_id=status.conversation.id if status.conversation else "",
        pricing_category=status.pricing.category if status.pricing else "",
        errors=[
            pb.StatusError(
                code=error.code,
                title=error.title,
                detail=(error.error_data.details if error.error_data else "") or error.message,
            )
            for error in status.errors
        ],
        raw_json=raw,
    )


class _Reader:
    """Reads one notification, collecting what it could read and what it refused."""

    def __init__(self, now: float) -> None:
        self.parsed = ParsedWebhook()
        self._context = {"now": now}

    def validate(self, model: type[ModelT], part: Any, where: str, **refused: Any) -> ModelT | None:
        try:
            return model.model_validate(part, context=self._context)
        except ValidationError as error:
            self.refuse(where, _why(error), part, **refused)
            return None

    def refuse(self, where: str, reason: str, part: Any, **readable: Any) -> None:
        self.parsed.refused.append(Refused(where, reason, raw_json(part), **readable))

    def known(self, model: BaseModel, where: str) -> None:
        self.parsed.unknown_fields.extend(meta.unknown_fields(model, where))

    def notification(self, document: Any) -> None:
        try:
            notification = meta.Notification.model_validate(document)
        except ValidationError as error:
            raise PayloadError(f"not a WhatsApp Business Account notification: {_why(error)}") from None
        for e, entry_part in enumerate(notification.entry):
            entry = self.validate(meta.Entry, entry_part, f"entry[{e}]")
            for c, change_part in enumerate(entry.changes if entry else []):
                self.change(change_part, f"entry[{e}].changes[{c}]")

    def change(self, part: Any, where: str) -> None:
        change = self.validate(meta.Change, part, where)
        if change is None:
            return
        if change.field != "messages":
            self.parsed.ignored_changes += 1
            return
        value = self.validate(meta.Value, change.value, f"{where}.value")
        if value is None:
            return
        number = value.metadata.phone_number_id
        self.parsed.phone_number_ids.add(number)
        names = self.names(value.contacts)
        for m, message_part in enumerate(self.parts(value.messages, number, f"{where}.value.messages")):
            self.message(message_part, number, names, f"{where}.value.messages[{m}]")
        for s, status_part in enumerate(self.parts(value.statuses, number, f"{where}.value.statuses")):
            self.status(status_part, number, f"{where}.value.statuses[{s}]")

    def parts(self, found: Any, number: str, where: str) -> list[Any]:
        if found is None or isinstance(found, list):
            return found or []
        self.refuse(where, "must be a list", found, phone_number_id=number)
        return []

    def names(self, contacts: Any) -> dict[str, str]:
        # Profile names are for display only: a malformed one costs the name, not the message.
        names: dict[str, str] = {}
        for part in contacts if isinstance(contacts, list) else []:
            try:
                contact = meta.Contact.model_validate(part)
            except ValidationError:
                continue
            if contact.profile is not None:
                names[contact.wa_id] = contact.profile.name
        return names

    def message(self, part: Any, number: str, names: dict[str, str], where: str) -> None:
        found = _readable_id(part, "from")
        message = self.validate(meta.Message, part, where, phone_number_id=number, contact=found)
        if message is None:
            return
        if message.type not in meta.KNOWN_TYPES:
            self.parsed.unknown_types.append(message.type)
        self.known(message, where)
        self.parsed.messages.append(_message(message, number, names, raw_json(part).decode()))

    def status(self, part: Any, number: str, where: str) -> None:
        found = _readable_id(part, "recipient_id")
        status = self.validate(meta.Status, part, where, phone_number_id=number, contact=found, is_status=True)
        if status is None:
            return
        self.known(status, where)
        self.parsed.statuses.append(_status(status, number, raw_json(part).decode()))


def parse_webhook(document: Any, now: float | None = None) -> ParsedWebhook:
    """Every readable message and status of a notification, and every part refused with its reason.

    `now` (unix seconds, the clock's by default) bounds the timestamps: none may be more than a
    day in the future. Raises PayloadError only when the body is not a notification at all.
    """
    reader = _Reader(time.time() if now is None else now)
    reader.notification(document)
    return reader.parsed
