"""Meta's webhook payloads as typed models, in the shapes the WhatsApp Cloud API documents.

Each model keeps the fields Meta adds later (`extra="allow"`): they are counted, kept in the
event's raw JSON, and never refused. What zapflow reads is checked: ids that become parts of a
subject, a Redis key or a deduplication id have a pattern; timestamps, coordinates, quantities
and error codes a range. A message or status that fails is refused alone (see webhook.py), so
one bad part never sinks its neighbours.

The envelope levels (notification, entry, change, value) hold their parts as raw JSON so that
each part is validated on its own.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

# A WhatsApp id (wa_id, recipient_id): the number, digits only. It becomes a subject token and a
# Redis key part, so nothing else may pass.
WA_ID_PATTERN = r"^[0-9]{1,20}$"
# The id Meta gives a business phone number (not the number itself).
PHONE_NUMBER_ID_PATTERN = r"^[0-9]{1,32}$"
WaId = Annotated[str, StringConstraints(pattern=WA_ID_PATTERN)]
PhoneNumberId = Annotated[str, StringConstraints(pattern=PHONE_NUMBER_ID_PATTERN)]
# A wamid: printable ASCII without spaces (it is a Nats-Msg-Id and a Redis key part).
MessageId = Annotated[str, StringConstraints(pattern=r"^[!-~]{1,256}$")]
# Meta's type and status names: lower-case words. Anything else is not a name Meta would send.
TypeName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
# protobuf's int32 (error codes) and a generous bound on quantities.
ErrorCode = Annotated[int, Field(ge=0, le=2**31 - 1)]

# WhatsApp did not exist before 2009; a message from the future by more than clock skew is not real.
EARLIEST_UNIX_TIME = 1_230_768_000
CLOCK_SKEW_S = 86_400


def _number_as_text(value: Any) -> Any:
    """Meta documents prices as strings and sometimes sends numbers: both read as text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


PriceText = Annotated[str, BeforeValidator(_number_as_text)]


class MetaModel(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


# Fields Meta documents that zapflow keeps in the raw JSON without reading: declared so that
# only fields nobody documented count as unknown.
Unread = Any


def _check_unix_time(value: int, info: ValidationInfo) -> int:
    now = (info.context or {}).get("now")
    latest = (now if now is not None else 2**33) + CLOCK_SKEW_S
    if not EARLIEST_UNIX_TIME <= value <= latest:
        raise ValueError(f"a unix time between {EARLIEST_UNIX_TIME} and {int(latest)} (now plus a day)")
    return value


def unknown_fields(model: BaseModel, path: str) -> list[str]:
    """The dotted paths of the fields Meta sent that the model does not know, at any depth."""
    found = [f"{path}.{name}" for name in model.__pydantic_extra__ or ()]
    # The declared fields are __dict__'s; most are None, so only models and lists are looked into.
    for name, value in model.__dict__.items():
        if isinstance(value, BaseModel):
            found.extend(unknown_fields(value, f"{path}.{name}"))
        elif isinstance(value, list):
            for child in value:
                if isinstance(child, BaseModel):
                    found.extend(unknown_fields(child, f"{path}.{name}"))
    return found


class Timestamped(MetaModel):
    # Meta sends the unix time as a string of digits; a number is read too.
    timestamp: int

    @field_validator("timestamp")
    @classmethod
    def _sane(cls, value: int, info: ValidationInfo) -> int:
        return _check_unix_time(value, info)


class MetaError(MetaModel):
    class Data(MetaModel):
        details: str = ""

    code: ErrorCode = 0
    title: str = ""
    message: str = ""
    error_data: Data | None = None


class Text(MetaModel):
    body: str


class Media(MetaModel):
    id: str
    mime_type: str = ""
    sha256: str = ""
    caption: str = ""
    filename: str = ""
    voice: bool = False
    animated: bool = False
    url: Unread = None


class Reaction(MetaModel):
    message_id: str
    # Absent when the customer removes their reaction.
    emoji: str = ""


class Location(MetaModel):
    latitude: Annotated[float, Field(ge=-90, le=90)]
    longitude: Annotated[float, Field(ge=-180, le=180)]
    name: str = ""
    address: str = ""
    url: str = ""


class SharedContact(MetaModel):
    class Name(MetaModel):
        formatted_name: str = ""
        first_name: Unread = None
        last_name: Unread = None
        middle_name: Unread = None
        prefix: Unread = None
        suffix: Unread = None

    class Phone(MetaModel):
        phone: str = ""
        wa_id: str = ""
        type: Unread = None

    class Email(MetaModel):
        email: str = ""
        type: Unread = None

    name: Name | None = None
    phones: list[Phone] = Field(default_factory=list)
    emails: list[Email] = Field(default_factory=list)
    addresses: Unread = None
    org: Unread = None
    urls: Unread = None
    birthday: Unread = None
    vcard: Unread = None


class OrderItem(MetaModel):
    product_retailer_id: str
    quantity: Annotated[int, Field(ge=0, le=1_000_000)]
    item_price: PriceText = ""
    currency: str = ""


class Order(MetaModel):
    catalog_id: str = ""
    text: str = ""
    product_items: list[OrderItem] = Field(default_factory=list)


class InteractiveReply(MetaModel):
    """button_reply and list_reply carry id and title; a Flow's nfm_reply a name and a JSON answer."""

    id: str = ""
    title: str = ""
    description: str = ""
    name: str = ""
    body: str = ""
    response_json: str = ""


class Interactive(MetaModel):
    type: TypeName
    button_reply: InteractiveReply | None = None
    list_reply: InteractiveReply | None = None
    nfm_reply: InteractiveReply | None = None

    def reply(self) -> InteractiveReply | None:
        found = getattr(self, self.type, None) if self.type in KNOWN_INTERACTIVE else None
        return found if isinstance(found, InteractiveReply) else None


KNOWN_INTERACTIVE = ("button_reply", "list_reply", "nfm_reply")


class Button(MetaModel):
    """A quick-reply button of a template the customer tapped."""

    payload: str = ""
    text: str = ""


class System(MetaModel):
    type: str = ""
    body: str = ""
    new_wa_id: str = ""
    wa_id: str = ""


class Context(MetaModel):
    id: str = ""
    forwarded: bool = False
    frequently_forwarded: bool = False
    referred_product: Unread = None
    # The business number a quoted message came from.
    from_: Unread = Field(default=None, alias="from")


MEDIA_TYPES = ("image", "video", "document", "audio", "sticker")


class Message(Timestamped):
    """One message a customer sent (value.messages[])."""

    sender: WaId = Field(alias="from")
    id: MessageId
    type: TypeName
    context: Context | None = None
    text: Text | None = None
    image: Media | None = None
    video: Media | None = None
    document: Media | None = None
    audio: Media | None = None
    sticker: Media | None = None
    reaction: Reaction | None = None
    location: Location | None = None
    contacts: list[SharedContact] | None = None
    order: Order | None = None
    interactive: Interactive | None = None
    button: Button | None = None
    system: System | None = None
    # "unsupported" messages say why in errors.
    errors: list[MetaError] = Field(default_factory=list)
    referral: Unread = None
    identity: Unread = None
    origin: Unread = None
    from_user_id: Unread = None
    from_parent_user_id: Unread = None

    @model_validator(mode="before")
    @classmethod
    def _has_a_phone_number(cls, data: Any) -> Any:
        # Since 2026 a customer with a WhatsApp username may come with a business-scoped user id
        # and no number; contacts are phone numbers in zapflow so far.
        if isinstance(data, dict) and "from" not in data and "from_user_id" in data:
            raise ValueError("the sender has a business-scoped user id but no phone number: not served yet")
        return data

    @model_validator(mode="after")
    def _has_its_content(self) -> Message:
        # A documented type must carry its content object: a text without its text is not a message.
        if self.type in CONTENT_TYPES and getattr(self, self.type) is None:
            raise ValueError(f"a {self.type} message needs its {self.type} object")
        return self


CONTENT_TYPES = (
    "text",
    *MEDIA_TYPES,
    "reaction",
    "location",
    "contacts",
    "order",
    "interactive",
    "button",
    "system",
)
KNOWN_TYPES = (*CONTENT_TYPES, "unsupported")


class Status(Timestamped):
    """A delivery status of a message the business sent (value.statuses[])."""

    class Conversation(MetaModel):
        id: str = ""
        origin: Unread = None
        expiration_timestamp: Unread = None

    class Pricing(MetaModel):
        category: str = ""
        billable: Unread = None
        pricing_model: Unread = None
        type: Unread = None

    id: MessageId
    status: TypeName
    recipient_id: WaId
    conversation: Conversation | None = None
    pricing: Pricing | None = None
    errors: list[MetaError] = Field(default_factory=list)
    recipient_type: Unread = None
    recipient_user_id: Unread = None
    recipient_parent_user_id: Unread = None
    biz_opaque_callback_data: Unread = None


KNOWN_STATUSES = ("sent", "delivered", "read", "played", "failed", "deleted")


class Profile(MetaModel):
    name: str = ""
    username: Unread = None


class Contact(MetaModel):
    """A sender's profile (value.contacts[]): only their display name is read."""

    wa_id: str = ""
    profile: Profile | None = None
    user_id: Unread = None
    parent_user_id: Unread = None
    identity_key_hash: Unread = None


class Metadata(MetaModel):
    phone_number_id: PhoneNumberId
    display_phone_number: Unread = None


class Value(MetaModel):
    """The value of a `messages` change; its parts stay raw to be validated one by one.

    Only what routes its messages is required: a wrong field elsewhere must not sink them.
    """

    messaging_product: Unread = None
    metadata: Metadata
    # Profile names, read leniently (webhook.py).
    contacts: Unread = None
    # Lists of raw parts; one that is not a list is refused alone (webhook.py).
    messages: Any = None
    statuses: Any = None
    # Errors about the account or the number rather than one message.
    errors: Unread = None


class Change(MetaModel):
    field: str
    value: Any = None


class Entry(MetaModel):
    id: Unread = None
    changes: list[Any]


class Notification(MetaModel):
    object: Literal["whatsapp_business_account"]
    entry: list[Any]
