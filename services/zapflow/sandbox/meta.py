"""Meta's shapes: Graph API requests and errors, webhook payloads, wamids.

Pure functions and models, no I/O: the emulator and the chat build on them.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from zapflow.sandbox.numbers import SandboxNumber
from zapflow.whatsapp.bounded import JsonLimits, PayloadError, load_bounded

API_VERSION_PATTERN = re.compile(r"^v[0-9]+\.[0-9]+$")
# Meta's wa_id is the number in international format, digits only (E.164 without the "+").
WA_ID_PATTERN = re.compile(r"^[0-9]{6,15}$")
# A phone number as a person may type it ("+55 (11) 9999-0000"); to_wa_id checks its digits.
PHONE_INPUT_PATTERN = r"^\+?[0-9 ().\-]{6,}$"
_PHONE_FORMATTING = re.compile(r"[\s\-().]")
_HTTP_URL = r"^https?://\S+$"
# Graph API requests are small and shallow: the limits the gateway puts on Meta's webhooks are
# far above them, and keep a hostile body from exhausting the stack or the memory.
GRAPH_JSON_LIMITS = JsonLimits()


def new_wamid() -> str:
    return "wamid." + secrets.token_urlsafe(24)


def _new_fbtrace_id() -> str:
    return secrets.token_urlsafe(18)[:23]


def unix_timestamp() -> str:
    """Meta sends timestamps as strings of whole seconds."""
    return str(int(time.time()))


def to_wa_id(phone: str) -> str | None:
    """The wa_id for a phone number as a person may type it ("+55 11 9999-0000"), or None."""
    digits = _PHONE_FORMATTING.sub("", phone).removeprefix("+")
    return digits if WA_ID_PATTERN.match(digits) else None


# --- errors -------------------------------------------------------------------------------


class GraphError(Exception):
    """A Graph API error answer: the HTTP status and Meta's {"error": {...}} body."""

    def __init__(
        self,
        http_status: int,
        code: int,
        message: str,
        *,
        error_type: str = "OAuthException",
        subcode: int | None = None,
        details: str | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.message = message
        self.error_type = error_type
        self.subcode = subcode
        self.details = details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.error_type, "code": self.code}
        if self.details is not None:
            error["error_data"] = {"messaging_product": "whatsapp", "details": self.details}
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        error["fbtrace_id"] = _new_fbtrace_id()
        return {"error": error}


def invalid_token() -> GraphError:
    return GraphError(401, 190, "Invalid OAuth access token - Cannot parse access token")


def unknown_object(object_id: str) -> GraphError:
    return GraphError(
        400,
        100,
        f"Unsupported post request. Object with ID '{object_id}' does not exist, cannot be loaded "
        "due to missing permissions, or does not support this operation. Please read the Graph "
        "API documentation at https://developers.facebook.com/docs/graph-api",
        error_type="GraphMethodException",
        subcode=33,
    )


def unknown_path(path: str) -> GraphError:
    return GraphError(400, 2500, f"Unknown path components: {path}")


def invalid_parameter(details: str) -> GraphError:
    return GraphError(400, 100, "(#100) Invalid parameter", details=details)


@dataclass(frozen=True)
class MetaError:
    """How Meta answers one of its error codes: the HTTP status, the title in `message`, and `details`."""

    http_status: int
    title: str
    details: str


# The codes zapflow handles, with Meta's wording (its error-codes reference); `meta_error` answers
# any other code too, for a test that injects one.
META_ERRORS: dict[int, MetaError] = {
    130429: MetaError(429, "Rate limit hit", "Cloud API message throughput has been reached."),
    131000: MetaError(500, "Something went wrong", "Message failed to send due to an unknown error."),
    131026: MetaError(400, "Message undeliverable", "Unable to deliver message. The recipient may not be on WhatsApp."),
    131047: MetaError(
        400,
        "Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
    ),
    131048: MetaError(
        400,
        "Spam rate limit hit",
        "Message failed to send because there are restrictions on how many messages can be sent from this phone "
        "number.",
    ),
    131049: MetaError(
        400,
        "This message was not delivered to maintain healthy ecosystem engagement.",
        "In order to maintain a healthy ecosystem engagement, the message failed to be delivered.",
    ),
    131050: MetaError(
        400,
        "Unable to deliver the message. This recipient has chosen to stop receiving marketing messages on "
        "WhatsApp from your business.",
        "The recipient stopped marketing messages from this business; only they can resume them.",
    ),
    131056: MetaError(
        400,
        "(Business Account, Consumer Account) pair rate limit hit",
        "Message failed to send because there were too many messages sent from this phone number to the same "
        "phone number in a short period of time.",
    ),
    132000: MetaError(
        400,
        "Number of parameters does not match the expected number of params",
        "The number of parameters given does not match the number the template expects.",
    ),
    132001: MetaError(
        400,
        "Template name does not exist in the translation",
        "The template does not exist in the given language or has not been approved.",
    ),
    132005: MetaError(
        400, "Translated text too long", "The template's text is too long once its parameters are filled."
    ),
    132007: MetaError(400, "Template Format Character Policy Violated", "The template's content violates a policy."),
    132012: MetaError(
        400,
        "Parameter format does not match format in the created template",
        "A parameter's format does not match the template's.",
    ),
    132015: MetaError(400, "Template is Paused", "Template is paused due to low quality so it cannot be sent."),
    132016: MetaError(
        400,
        "Template is Disabled",
        "Template has been paused too many times due to low quality and is now permanently disabled.",
    ),
}


def meta_error(code: int, details: str | None = None) -> GraphError:
    """Meta's answer for an error code, with its own details unless more precise ones are given."""
    known = META_ERRORS.get(code, MetaError(400, "Error", f"Error {code}."))
    return GraphError(known.http_status, code, f"(#{code}) {known.title}", details=details or known.details)


# The faults a test names rather than giving a code: the HTTP status each stands for.
FAULT_KINDS = {"429": 130429, "500": 131000, "131047": 131047}
FaultKind = Literal["429", "500", "131047"]


# --- requests to POST /{version}/{phone_number_id}/messages ------------------------------


class _Shape(BaseModel):
    # Unknown fields are refused: a misspelt key would be silently dropped by Meta, and the
    # sandbox is where zapflow should learn about it.
    model_config = ConfigDict(extra="forbid")


class TextContent(_Shape):
    body: str = Field(min_length=1, max_length=4096)
    preview_url: bool = False


class MediaContent(_Shape):
    id: str | None = Field(default=None, min_length=1)
    link: str | None = Field(default=None, pattern=_HTTP_URL)
    caption: str | None = Field(default=None, max_length=1024)
    filename: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _id_or_link(self) -> Self:
        if (self.id is None) == (self.link is None):
            raise ValueError("give exactly one of id or link")
        return self


class LocationContent(_Shape):
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    name: str | None = None
    address: str | None = None


class ContactCardName(BaseModel):
    model_config = ConfigDict(extra="allow")
    formatted_name: str = Field(min_length=1)


class ContactCard(BaseModel):
    # A vCard-like object with many optional parts; only the required name is checked.
    model_config = ConfigDict(extra="allow")
    name: ContactCardName


class ReactionContent(_Shape):
    message_id: str = Field(min_length=1)
    # An empty emoji removes the reaction.
    emoji: str = Field(max_length=16)


class TemplateLanguage(_Shape):
    code: str = Field(min_length=2, max_length=16)
    policy: Literal["deterministic"] | None = None


class TemplateContent(_Shape):
    name: str = Field(min_length=1, max_length=512)
    language: TemplateLanguage
    # Header/body/button parameters: their shape depends on the approved template.
    components: list[dict[str, Any]] = Field(default_factory=list)


class InteractiveBody(_Shape):
    text: str = Field(min_length=1, max_length=1024)


class InteractiveFooter(_Shape):
    text: str = Field(min_length=1, max_length=60)


class InteractiveHeader(_Shape):
    type: Literal["text", "image", "video", "document"]
    text: str | None = Field(default=None, min_length=1, max_length=60)
    image: MediaContent | None = None
    video: MediaContent | None = None
    document: MediaContent | None = None

    @model_validator(mode="after")
    def _content_of_its_type(self) -> Self:
        if getattr(self, self.type) is None:
            raise ValueError(f"a header of type {self.type} needs {self.type}")
        return self


class ReplyButtonReply(_Shape):
    id: str = Field(min_length=1, max_length=256)
    title: str = Field(min_length=1, max_length=20)


class ReplyButton(_Shape):
    type: Literal["reply"]
    reply: ReplyButtonReply


class ButtonAction(_Shape):
    buttons: list[ReplyButton] = Field(min_length=1, max_length=3)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        ids = [b.reply.id for b in self.buttons]
        titles = [b.reply.title for b in self.buttons]
        if len(set(ids)) != len(ids) or len(set(titles)) != len(titles):
            raise ValueError("button ids and titles must be unique")
        return self


class ListRow(_Shape):
    id: str = Field(min_length=1, max_length=200)
    title: str = Field(min_length=1, max_length=24)
    description: str | None = Field(default=None, max_length=72)


class ListSection(_Shape):
    title: str | None = Field(default=None, min_length=1, max_length=24)
    rows: list[ListRow] = Field(min_length=1, max_length=10)


class ListAction(_Shape):
    button: str = Field(min_length=1, max_length=20)
    sections: list[ListSection] = Field(min_length=1, max_length=10)

    @model_validator(mode="after")
    def _rows_and_titles(self) -> Self:
        rows = [row for section in self.sections for row in section.rows]
        if len(rows) > 10:
            raise ValueError("a list holds at most 10 rows in all sections")
        if len({row.id for row in rows}) != len(rows):
            raise ValueError("row ids must be unique")
        if len(self.sections) > 1 and any(s.title is None for s in self.sections):
            raise ValueError("every section needs a title when there are several")
        return self


class CtaUrlParameters(_Shape):
    display_text: str = Field(min_length=1, max_length=20)
    url: str = Field(pattern=_HTTP_URL)


class CtaUrlAction(_Shape):
    name: Literal["cta_url"]
    parameters: CtaUrlParameters


class ButtonInteractive(_Shape):
    type: Literal["button"]
    header: InteractiveHeader | None = None
    body: InteractiveBody
    footer: InteractiveFooter | None = None
    action: ButtonAction


class ListInteractive(_Shape):
    type: Literal["list"]
    header: InteractiveHeader | None = None
    body: InteractiveBody
    footer: InteractiveFooter | None = None
    action: ListAction

    @model_validator(mode="after")
    def _text_header_only(self) -> Self:
        if self.header is not None and self.header.type != "text":
            raise ValueError("a list message only takes a text header")
        return self


class CtaUrlInteractive(_Shape):
    type: Literal["cta_url"]
    header: InteractiveHeader | None = None
    body: InteractiveBody
    footer: InteractiveFooter | None = None
    action: CtaUrlAction


# The interactive kinds the sandbox emulates; others (flow, product...) are refused clearly.
Interactive = Annotated[ButtonInteractive | ListInteractive | CtaUrlInteractive, Field(discriminator="type")]

MessageType = Literal[
    "text",
    "image",
    "audio",
    "document",
    "video",
    "sticker",
    "location",
    "contacts",
    "interactive",
    "template",
    "reaction",
]
_CAPTIONED = {"image", "video", "document"}


class MessageContext(_Shape):
    message_id: str = Field(min_length=1)


class SendMessageRequest(_Shape):
    messaging_product: Literal["whatsapp"]
    recipient_type: Literal["individual"] = "individual"
    to: str = Field(min_length=1, max_length=32)
    # Meta sends a text message when type is left out.
    type: MessageType = "text"
    context: MessageContext | None = None
    biz_opaque_callback_data: str | None = Field(default=None, max_length=512)

    text: TextContent | None = None
    image: MediaContent | None = None
    audio: MediaContent | None = None
    document: MediaContent | None = None
    video: MediaContent | None = None
    sticker: MediaContent | None = None
    location: LocationContent | None = None
    contacts: list[ContactCard] | None = Field(default=None, min_length=1)
    interactive: Interactive | None = None
    template: TemplateContent | None = None
    reaction: ReactionContent | None = None

    @model_validator(mode="after")
    def _content_matches_type(self) -> Self:
        if to_wa_id(self.to) is None:
            raise ValueError("to must be a phone number in international format")
        contents = {name for name in get_args(MessageType) if getattr(self, name) is not None}
        if self.type not in contents:
            raise ValueError(f"a message of type {self.type} needs the {self.type} object")
        if others := sorted(contents - {self.type}):
            raise ValueError(f"a message of type {self.type} cannot carry {', '.join(others)}")
        content = getattr(self, self.type)
        if isinstance(content, MediaContent):
            if content.caption is not None and self.type not in _CAPTIONED:
                raise ValueError(f"{self.type} does not take a caption")
            if content.filename is not None and self.type != "document":
                raise ValueError("only a document takes a filename")
        return self

    @property
    def wa_id(self) -> str:
        wa_id = to_wa_id(self.to)
        assert wa_id is not None, "checked by the validator"
        return wa_id


class TypingIndicator(_Shape):
    type: Literal["text"]


class MarkReadRequest(_Shape):
    messaging_product: Literal["whatsapp"]
    status: Literal["read"]
    message_id: str = Field(min_length=1)
    typing_indicator: TypingIndicator | None = None


# "button", "list", "cta_url": the tags of the Interactive union's members.
_INTERACTIVE_TAGS = frozenset(
    get_args(member.model_fields["type"].annotation)[0] for member in get_args(get_args(Interactive)[0])
)


def _parameter_path(loc: tuple[int | str, ...]) -> str:
    # Pydantic names the chosen union member in the location ("interactive.button.action");
    # the client never wrote that part, so it is left out.
    parts = [str(part) for part in loc]
    if len(parts) > 1 and parts[0] == "interactive" and parts[1] in _INTERACTIVE_TAGS:
        del parts[1]
    return ".".join(parts)


def _describe(error: ValidationError) -> str:
    """Meta-like details: the parameter path and what is wrong with it."""
    problems = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        path = _parameter_path(item["loc"])
        problems.append(f"Param {path}: {message}" if path else message)
    return "; ".join(problems)


def read_graph_body(body: bytes) -> tuple[Any, GraphError | None]:
    """The JSON document of a request body (None when unreadable) and the error it deserves, if any.

    The error is only answered once the caller is authorised, as Meta does; the document is
    recorded either way.
    """
    try:
        return load_bounded(body, GRAPH_JSON_LIMITS), None
    except PayloadError as error:
        return None, invalid_parameter(str(error))


def parse_graph_request(payload: Any) -> SendMessageRequest | MarkReadRequest:
    """The request a client sent to /messages, or GraphError(400, #100) saying what is wrong."""
    if not isinstance(payload, dict):
        raise invalid_parameter("the body must be a JSON object")
    model: type[SendMessageRequest | MarkReadRequest] = MarkReadRequest if "status" in payload else SendMessageRequest
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        raise invalid_parameter(_describe(error)) from None


# --- webhooks ---------------------------------------------------------------------------

StatusName = Literal["sent", "delivered", "read"]


def webhook(number: SandboxNumber, value: dict[str, Any]) -> dict[str, Any]:
    """The envelope of every notification: one entry for the WABA, one change on "messages"."""
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": number.waba_id,
                "changes": [
                    {
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": number.display_phone_number,
                                "phone_number_id": number.phone_number_id,
                            },
                            **value,
                        },
                        "field": "messages",
                    }
                ],
            }
        ],
    }


def inbound_webhook(number: SandboxNumber, wa_id: str, profile_name: str, message: dict[str, Any]) -> dict[str, Any]:
    """A customer's message as Meta notifies it."""
    return webhook(
        number,
        {"contacts": [{"profile": {"name": profile_name}, "wa_id": wa_id}], "messages": [message]},
    )


def status_webhook(
    number: SandboxNumber,
    *,
    wamid: str,
    recipient: str,
    status: StatusName,
    is_template: bool,
    accepted_at: float,
    biz_opaque_callback_data: str | None = None,
) -> dict[str, Any]:
    """A status of a message the business sent; sent and delivered carry billing information."""
    entry: dict[str, Any] = {
        "id": wamid,
        "status": status,
        "timestamp": unix_timestamp(),
        "recipient_id": recipient,
    }
    if status != "read":
        conversation: dict[str, Any] = {
            "id": hashlib.sha256(f"{number.phone_number_id}:{recipient}".encode()).hexdigest()[:32],
            "origin": {"type": "utility" if is_template else "service"},
        }
        if status == "sent":
            conversation["expiration_timestamp"] = str(int(accepted_at) + 24 * 3600)
        entry["conversation"] = conversation
        entry["pricing"] = {
            "billable": is_template,
            "pricing_model": "PMP",
            "category": "utility" if is_template else "service",
        }
    if biz_opaque_callback_data is not None:
        entry["biz_opaque_callback_data"] = biz_opaque_callback_data
    return webhook(number, {"statuses": [entry]})


def encode_webhook(payload: dict[str, Any]) -> bytes:
    """The exact bytes to sign and send.

    Meta escapes non-ASCII characters and slashes ("\\/"): a receiver that re-serializes the
    JSON before checking the signature fails against Meta, so it must fail here too.
    """
    return json.dumps(payload, separators=(",", ":")).replace("/", "\\/").encode()
