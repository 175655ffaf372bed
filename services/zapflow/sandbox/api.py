"""HTTP routes of the sandbox, one router per resource."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Self

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, Response, status
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
    PHONE_INPUT_PATTERN,
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


# --- faults -----------------------------------------------------------------------------------

faults = APIRouter(prefix="/sandbox/faults", tags=["faults"])


class InjectFault(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: FaultKind
    count: int = Field(default=1, ge=1, le=1_000_000)
    phone_number_id: str | None = Field(default=None, pattern=PHONE_NUMBER_ID_PATTERN)


@faults.get("")
async def list_faults(services: Services) -> dict[str, Any]:
    """Failures still waiting to happen."""
    return {"faults": [fault.as_dict() for fault in services.faults.pending()]}


@faults.post("", status_code=status.HTTP_201_CREATED, responses=problems(404))
async def inject_fault(body: InjectFault, services: Services) -> dict[str, Any]:
    """Make the next `count` sends (for one number, or any) fail with Meta's error for `kind`."""
    if body.phone_number_id is not None:
        _known_number(services, body.phone_number_id)
    services.faults.add(body.kind, body.count, body.phone_number_id)
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

    @model_validator(mode="after")
    def _one_kind_of_message(self) -> Self:
        if to_wa_id(self.sender) is None:
            raise ValueError("from must be a phone number in international format, 6 to 15 digits")
        if (self.text is None) == (self.reply is None):
            raise ValueError("give exactly one of text or reply")
        return self


@chat.post("/send", response_model=None, responses=problems(404, 502))
async def chat_send(body: ChatSend, services: Services) -> dict[str, Any] | JSONResponse:
    """Send a customer message to the gateway, signed, as Meta would; 502 if it cannot be reached."""
    number = _known_number(services, body.phone_number_id)
    wa_id = to_wa_id(body.sender)
    assert wa_id is not None, "checked by ChatSend"
    wamid = new_wamid()
    if body.reply is not None:
        message = customer_reply(number, wa_id, wamid, body.reply.kind, body.reply.as_meta(), body.context_message_id)
    else:
        assert body.text is not None, "checked by ChatSend"
        message = customer_text(number, wa_id, wamid, body.text, body.context_message_id)
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
