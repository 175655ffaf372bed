"""HTTP routes of the sandbox, one router per resource."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Self

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator
from sse_starlette import EventSourceResponse, ServerSentEvent

from zapflow.platform.http import problems
from zapflow.platform.service import Runtime, runtime_dependency
from zapflow.sandbox.chat import ChatHub
from zapflow.sandbox.delivery import GatewayAnswer, GatewayUnreachable
from zapflow.sandbox.graph import GraphEmulator
from zapflow.sandbox.inbound import InboundRelay, ReplyKind, addressed_phone_number_id, customer_reply, customer_text
from zapflow.sandbox.meta import (
    FAULT_KINDS,
    PHONE_INPUT_PATTERN,
    WA_ID_PATTERN,
    FaultKind,
    MarkReadRequest,
    SendMessageRequest,
    inbound_webhook,
    new_wamid,
    to_wa_id,
)
from zapflow.sandbox.numbers import (
    NumberConflict,
    NumberDirectory,
    SandboxNumber,
    default_display_phone_number,
    default_waba_id,
)
from zapflow.sandbox.recording import FaultPlan, Recorder
from zapflow.sandbox.rules import SendingRules, Template, TemplateCategory, TemplateStatus, body_parameter_count
from zapflow.sandbox.settings import SandboxSettings
from zapflow.tenants.model import TENANT_NAME_PATTERN
from zapflow.whatsapp.payload import PHONE_NUMBER_ID_PATTERN

# The longest phone number a person may type, spaces and punctuation included.
PHONE_INPUT_MAX_LENGTH = 32
# Keep-alive comments on the chat stream, so proxies and browsers do not drop an idle chat.
_SSE_PING_SECONDS = 15


@dataclass(frozen=True)
class SandboxServices:
    """Everything the routes work with; one instance per running app."""

    numbers: NumberDirectory
    recorder: Recorder
    faults: FaultPlan
    rules: SendingRules
    hub: ChatHub
    graph: GraphEmulator
    relay: InboundRelay
    chat_page: str


CurrentRuntime = Annotated[
    Runtime[SandboxSettings, SandboxServices], Depends(runtime_dependency(SandboxSettings, SandboxServices))
]


async def _services(runtime: CurrentRuntime) -> SandboxServices:
    return runtime.parts


Services = Annotated[SandboxServices, Depends(_services)]


def _known_number(services: SandboxServices, phone_number_id: str) -> SandboxNumber:
    number = services.numbers.get(phone_number_id)
    if number is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown phone_number_id {phone_number_id}")
    return number


def _relay_answer(answer: GatewayAnswer, **extra: Any) -> dict[str, Any]:
    return {**extra, "gateway_status": answer.status, "gateway_body": answer.body}


def _unreachable(error: GatewayUnreachable) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=status.HTTP_502_BAD_GATEWAY)


# --- the chat page ------------------------------------------------------------

pages = APIRouter(tags=["pages"])


@pages.get("/", response_class=HTMLResponse)
async def chat_page(services: Services) -> HTMLResponse:
    """The web chat: talk to the bots as a WhatsApp customer would."""
    return HTMLResponse(services.chat_page)


@pages.get("/openapi.json", include_in_schema=False)
async def openapi_document(request: Request) -> dict[str, Any]:
    """This API's OpenAPI document, for people writing tests against the sandbox."""
    document: dict[str, Any] = request.app.openapi()
    return document


# --- numbers --------------------------------------------------------------------------------

numbers = APIRouter(prefix="/sandbox/numbers", tags=["numbers"])


class RegisterNumber(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(pattern=TENANT_NAME_PATTERN)
    phone_number_id: str = Field(pattern=PHONE_NUMBER_ID_PATTERN)
    access_token: str = Field(min_length=1, max_length=1024)
    app_secret: str = Field(min_length=1, max_length=1024)
    display_name: str | None = Field(default=None, min_length=1, max_length=64)
    display_phone_number: str | None = Field(default=None, pattern=r"^[0-9]{6,15}$")
    waba_id: str | None = Field(default=None, pattern=PHONE_NUMBER_ID_PATTERN)

    def to_number(self) -> SandboxNumber:
        return SandboxNumber(
            tenant=self.tenant,
            phone_number_id=self.phone_number_id,
            access_token=self.access_token,
            app_secret=self.app_secret,
            display_name=self.display_name or self.tenant,
            display_phone_number=self.display_phone_number or default_display_phone_number(self.phone_number_id),
            waba_id=self.waba_id or default_waba_id(self.phone_number_id),
        )


@numbers.get("")
async def list_numbers(services: Services) -> dict[str, Any]:
    """The numbers the sandbox answers for, without their credentials."""
    return {"numbers": [number.public() for number in services.numbers.all()]}


@numbers.post("", status_code=status.HTTP_201_CREATED, responses=problems(409))
async def register_number(body: RegisterNumber, services: Services, response: Response) -> dict[str, Any]:
    """Add a number (201) or update one of the same tenant (200)."""
    number = body.to_number()
    try:
        created = services.numbers.register(number)
    except NumberConflict as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None
    if not created:
        response.status_code = status.HTTP_200_OK
    return {"number": number.public()}


# --- what Meta knows of a number: its templates, its customers ------------------------------------

NumberId = Annotated[str, Path(pattern=PHONE_NUMBER_ID_PATTERN)]
WaId = Annotated[str, Path(pattern=WA_ID_PATTERN.pattern, description="The customer's wa_id: digits only")]


class RegisterTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_]{1,512}$")
    language: str = Field(pattern=r"^[A-Za-z]{2,3}(_[A-Za-z0-9]{2,4})?$", description="e.g. en_US, pt_BR")
    category: TemplateCategory
    status: TemplateStatus = "APPROVED"
    body: str = Field(min_length=1, max_length=1024, description="The approved text, with {{1}}, {{2}} ... parameters")
    # Meta's bounds: a text header takes one variable; a template has at most 10 buttons, one variable each.
    header_parameters: int = Field(default=0, ge=0, le=1)
    button_parameters: int = Field(default=0, ge=0, le=10)

    def to_template(self) -> Template:
        return Template(
            name=self.name,
            language=self.language,
            category=self.category,
            status=self.status,
            body_parameters=body_parameter_count(self.body),
            header_parameters=self.header_parameters,
            button_parameters=self.button_parameters,
            body=self.body,
        )


class CustomerChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    last_message_at: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="When the customer last wrote, Unix seconds, as if they had (no webhook is sent): for tests that "
        "play the platform's side alone; an earlier time closes their window",
    )
    marketing_stopped: bool | None = Field(
        default=None, description="Whether the customer stopped marketing messages from this number"
    )


@numbers.get("/{phone_number_id}/templates", responses=problems(404))
async def list_templates(phone_number_id: NumberId, services: Services) -> dict[str, Any]:
    """The templates registered for a number; none: any template is accepted."""
    _known_number(services, phone_number_id)
    return {"templates": [template.as_dict() for template in services.rules.templates(phone_number_id)]}


@numbers.post("/{phone_number_id}/templates", status_code=status.HTTP_201_CREATED, responses=problems(404))
async def register_template(
    phone_number_id: NumberId, body: RegisterTemplate, services: Services, response: Response
) -> dict[str, Any]:
    """Register a template (201) or replace one of the same name and language (200); sends of it are then checked."""
    _known_number(services, phone_number_id)
    template = body.to_template()
    [created] = services.rules.register_templates(phone_number_id, [template])
    if not created:
        response.status_code = status.HTTP_200_OK
    return {"template": template.as_dict()}


@numbers.delete("/{phone_number_id}/templates", status_code=status.HTTP_204_NO_CONTENT, responses=problems(404))
async def forget_templates(phone_number_id: NumberId, services: Services) -> None:
    """Forget a number's templates: any template is accepted again."""
    _known_number(services, phone_number_id)
    services.rules.forget_templates(phone_number_id)


@numbers.get("/{phone_number_id}/customers/{wa_id}", responses=problems(404))
async def customer_state(phone_number_id: NumberId, wa_id: WaId, services: Services) -> dict[str, Any]:
    """When the customer last wrote, whether their window is open, their marketing choice and pair allowance."""
    _known_number(services, phone_number_id)
    return {"customer": services.rules.customer(phone_number_id, wa_id).as_dict()}


@numbers.patch("/{phone_number_id}/customers/{wa_id}", responses=problems(400, 404))
async def change_customer(
    phone_number_id: NumberId, wa_id: WaId, body: CustomerChange, services: Services
) -> dict[str, Any]:
    """Set when a customer last wrote and whether they stopped marketing messages (writing never resumes them)."""
    _known_number(services, phone_number_id)
    if body.last_message_at is not None:
        if body.last_message_at > services.rules.now():
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "last_message_at is in the future")
        services.rules.set_last_message(phone_number_id, wa_id, body.last_message_at)
    if body.marketing_stopped is not None:
        services.rules.set_marketing_stopped(phone_number_id, wa_id, body.marketing_stopped)
    return {"customer": services.rules.customer(phone_number_id, wa_id).as_dict()}


# --- faults -----------------------------------------------------------------------------------

faults = APIRouter(prefix="/sandbox/faults", tags=["faults"])


class InjectFault(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: FaultKind | None = Field(default=None, description="A named fault: 429, 500 or 131047")
    code: int | None = Field(default=None, ge=1, le=9_999_999, description="Any Meta error code, e.g. 131049")
    count: int = Field(default=1, ge=1, le=1_000_000)
    phone_number_id: str | None = Field(default=None, pattern=PHONE_NUMBER_ID_PATTERN)

    @model_validator(mode="after")
    def _kind_or_code(self) -> Self:
        if (self.kind is None) == (self.code is None):
            raise ValueError("give exactly one of kind or code")
        return self

    @property
    def meta_code(self) -> int:
        if self.code is not None:
            return self.code
        assert self.kind is not None, "checked by the validator"
        return FAULT_KINDS[self.kind]


@faults.get("")
async def list_faults(services: Services) -> dict[str, Any]:
    """Failures still waiting to happen."""
    return {"faults": [fault.as_dict() for fault in services.faults.pending()]}


@faults.post("", status_code=status.HTTP_201_CREATED, responses=problems(404))
async def inject_fault(body: InjectFault, services: Services) -> dict[str, Any]:
    """Make the next `count` sends (for one number, or any) fail with Meta's error for `kind` or `code`."""
    if body.phone_number_id is not None:
        _known_number(services, body.phone_number_id)
    services.faults.add(body.meta_code, body.count, body.phone_number_id)
    return {"faults": [fault.as_dict() for fault in services.faults.pending()]}


@faults.delete("", status_code=status.HTTP_204_NO_CONTENT)
async def clear_faults(services: Services) -> None:
    """Forget every pending failure."""
    services.faults.clear()


# --- recording ---------------------------------------------------------------------------------

recording = APIRouter(prefix="/sandbox", tags=["recording"])


@recording.get("/messages", responses=problems(400))
async def list_messages(
    services: Services,
    phone_number_id: Annotated[str | None, Query(pattern=PHONE_NUMBER_ID_PATTERN)] = None,
    to: Annotated[
        str | None,
        Query(
            description="Recipient, any phone format", pattern=PHONE_INPUT_PATTERN, max_length=PHONE_INPUT_MAX_LENGTH
        ),
    ] = None,
) -> dict[str, Any]:
    """Messages the Graph API accepted, oldest first."""
    wa_id = None
    if to is not None and (wa_id := to_wa_id(to)) is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "to must be a phone number in international format")
    return {"messages": [m.as_dict() for m in services.recorder.messages(phone_number_id, wa_id)]}


@recording.delete("/messages", status_code=status.HTTP_204_NO_CONTENT)
async def clear_recordings(services: Services) -> None:
    """Forget recorded messages, attempts and inbound messages."""
    services.recorder.clear()


@recording.get("/attempts")
async def list_attempts(
    services: Services, phone_number_id: Annotated[str | None, Query(pattern=PHONE_NUMBER_ID_PATTERN)] = None
) -> dict[str, Any]:
    """Every call to /messages, refused ones included, with the status answered."""
    return {"attempts": [a.as_dict() for a in services.recorder.attempts(phone_number_id)]}


# --- the web chat: customer messages in, the bot's actions out ----------------------------------

chat = APIRouter(prefix="/sandbox/chat", tags=["chat"])


class ChatReply(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: ReplyKind
    id: str = Field(min_length=1, max_length=256)
    title: str = Field(min_length=1, max_length=24)
    description: str | None = Field(default=None, max_length=72)

    def as_meta(self) -> dict[str, str]:
        reply = {"id": self.id, "title": self.title}
        if self.description:
            reply["description"] = self.description
        return reply


class ChatSend(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    phone_number_id: str = Field(pattern=PHONE_NUMBER_ID_PATTERN)
    sender: str = Field(
        alias="from",
        pattern=PHONE_INPUT_PATTERN,
        max_length=PHONE_INPUT_MAX_LENGTH,
        description="Customer phone number",
    )
    name: str = Field(default="Sandbox customer", min_length=1, max_length=64)
    text: str | None = Field(default=None, min_length=1, max_length=4096)
    reply: ChatReply | None = None
    context_message_id: str | None = Field(default=None, min_length=1, max_length=256)
    timestamp: int | None = Field(
        default=None,
        ge=0,
        le=10**11,
        description="When the customer sent it, Unix seconds (default: now); an earlier one plays a message Meta "
        "delivers late, and the customer's 24-hour window runs from it",
    )

    @model_validator(mode="after")
    def _one_kind_of_message(self) -> Self:
        if to_wa_id(self.sender) is None:
            raise ValueError("from must be a phone number in international format, 6 to 15 digits")
        if (self.text is None) == (self.reply is None):
            raise ValueError("give exactly one of text or reply")
        return self


@chat.post("/send", response_model=None, responses=problems(400, 404, 502))
async def chat_send(body: ChatSend, services: Services) -> dict[str, Any] | JSONResponse:
    """Send a customer message to the gateway, signed, as Meta would; 502 if it cannot be reached."""
    number = _known_number(services, body.phone_number_id)
    wa_id = to_wa_id(body.sender)
    assert wa_id is not None, "checked by ChatSend"
    now = int(services.rules.now())
    if body.timestamp is not None and body.timestamp > now:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "timestamp is in the future: a customer sends messages now")
    sent_at = now if body.timestamp is None else body.timestamp
    wamid = new_wamid()
    if body.reply is not None:
        reply = body.reply.as_meta()
        message = customer_reply(number, wa_id, wamid, sent_at, body.reply.kind, reply, body.context_message_id)
    else:
        assert body.text is not None, "checked by ChatSend"
        message = customer_text(number, wa_id, wamid, sent_at, body.text, body.context_message_id)
    payload = inbound_webhook(number, wa_id, body.name, message)
    try:
        answer = await services.relay.forward(number, payload)
    except GatewayUnreachable as error:
        return _unreachable(error)
    return _relay_answer(answer, wamid=wamid, wa_id=wa_id)


@chat.get("/events", response_class=EventSourceResponse, responses=problems(400, 404))
async def chat_events(
    services: Services,
    phone_number_id: Annotated[str, Query(pattern=PHONE_NUMBER_ID_PATTERN)],
    contact: Annotated[
        str, Query(description="The customer's phone number", min_length=1, max_length=PHONE_INPUT_MAX_LENGTH)
    ],
) -> EventSourceResponse:
    """Server-sent events: the bot's messages to this contact, read receipts and typing."""
    number = _known_number(services, phone_number_id)
    wa_id = to_wa_id(contact)
    if wa_id is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "contact must be a phone number in international format")

    async def stream() -> AsyncIterator[ServerSentEvent]:
        # Subscribed inside the generator so that the subscription ends with the stream,
        # and "ready" tells the client nothing sent from now on can be missed.
        with services.hub.subscribe((number.phone_number_id, wa_id)) as queue:
            yield ServerSentEvent(event="ready", data=json.dumps({"wa_id": wa_id, **number.public()}))
            while True:
                event = await queue.get()
                yield ServerSentEvent(event=event.kind, data=json.dumps(event.data))

    return EventSourceResponse(stream(), ping=_SSE_PING_SECONDS)


# --- inbound: any notification, for tests ----------------------------------------------------------

inbound = APIRouter(prefix="/sandbox", tags=["inbound"])


@inbound.post("/inbound", response_model=None, responses=problems(400, 404, 502))
async def forward_inbound(
    payload: dict[str, Any],
    services: Services,
    phone_number_id: Annotated[
        str | None,
        Query(
            description="Whose app secret signs it; default: the payload's metadata", pattern=PHONE_NUMBER_ID_PATTERN
        ),
    ] = None,
) -> dict[str, Any] | JSONResponse:
    """Sign any Meta-shaped notification with the number's app secret and POST it to the gateway."""
    addressed = phone_number_id or addressed_phone_number_id(payload)
    if addressed is None:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            "no phone_number_id: pass it as a query parameter or in entry[].changes[].value.metadata",
        )
    number = _known_number(services, addressed)
    try:
        answer = await services.relay.forward(number, payload)
    except GatewayUnreachable as error:
        return _unreachable(error)
    return _relay_answer(answer)


# --- the Graph API ----------------------------------------------------------------------------

graph = APIRouter(tags=["graph api"])

# The route reads its body raw, to refuse it in Meta's error format rather than FastAPI's; the
# OpenAPI document still describes the body, its models under components (describe_graph_api_models).
_GRAPH_REQUEST_SCHEMA = TypeAdapter(SendMessageRequest | MarkReadRequest).json_schema(
    ref_template="#/components/schemas/{model}"
)
GRAPH_API_MODELS: dict[str, Any] = _GRAPH_REQUEST_SCHEMA.pop("$defs")


@graph.post(
    "/{api_version}/{phone_number_id}/messages",
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": _GRAPH_REQUEST_SCHEMA}}}
    },
)
async def graph_messages(
    api_version: str,
    phone_number_id: str,
    request: Request,
    services: Services,
    authorization: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Send a message or mark one as read, as graph.facebook.com does."""
    body = await request.body()
    http_status, answer = services.graph.handle(api_version, phone_number_id, authorization, body)
    return JSONResponse(answer, status_code=http_status)


routers = [pages, numbers, faults, recording, chat, inbound, graph]


def describe_graph_api_models(app: FastAPI) -> None:
    """Add the Graph API's request models to the app's OpenAPI components, where its route refers to them."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()  # and FastAPI keeps it in app.openapi_schema: this runs once
        document.setdefault("components", {}).setdefault("schemas", {}).update(GRAPH_API_MODELS)
        return document

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the document
