"""The inbox's JSON API under /api/v1/: sessions for the web inbox, bearer tokens for integrations.

Every route acts as one agent of one tenant (`Agent`), and every read and write is scoped to that
tenant: another tenant's conversation is as missing (404) as one that never was. The web inbox
signs in with a session cookie (HttpOnly, SameSite=Strict) and sends the session's CSRF token in
`X-CSRF-Token` on every request that changes something; integrations send
`Authorization: Bearer <token>` (`zapflow agent token`) and need no CSRF token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_validator
from sse_starlette import EventSourceResponse, ServerSentEvent

from zapflow.handoff.accounts import Accounts, Principal
from zapflow.handoff.desk import Desk, DeskError, Detail, Entry, Summary
from zapflow.handoff.settings import HandoffSettings
from zapflow.platform.fanout import Fanout
from zapflow.platform.http import problems
from zapflow.platform.service import Runtime, runtime_dependency
from zapflow.privacy.erasure import ErasureError, normalise_phone
from zapflow.tenants.model import TENANT_NAME_PATTERN

SESSION_COOKIE = "zapflow_inbox"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The inbox's event stream refreshes the agent's presence this often (and pings the browser).
PRESENCE_EVERY_S = 20.0
_STATUS = {
    "not_found": status.HTTP_404_NOT_FOUND,
    "conflict": status.HTTP_409_CONFLICT,
    # 400, not 422: FastAPI's 422 is the schema's own refusal, with a list of reasons.
    "invalid": status.HTTP_400_BAD_REQUEST,
    "window_closed": status.HTTP_409_CONFLICT,
}


class InboxFeed(Fanout[str, dict[str, Any]]):
    """Inbox activity per tenant, relayed from NATS to this replica's open event streams."""


@dataclass(frozen=True)
class HandoffParts:
    desk: Desk
    accounts: Accounts
    feed: InboxFeed


HandoffRuntime = Annotated[
    Runtime[HandoffSettings, HandoffParts], Depends(runtime_dependency(HandoffSettings, HandoffParts))
]


async def current_agent(
    request: Request,
    runtime: HandoffRuntime,
    authorization: Annotated[str | None, Header()] = None,
    csrf: Annotated[str | None, Header(alias=CSRF_HEADER)] = None,
) -> Principal:
    """The agent behind the request: a bearer token, or the inbox's session cookie (with CSRF on writes)."""
    accounts = runtime.parts.accounts
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        agent = await accounts.by_token(token.strip()) if scheme.lower() == "bearer" else None
        if agent is None:
            raise _unauthorised("the bearer token is not valid (create one with `zapflow agent token`)")
        return agent
    cookie = request.cookies.get(SESSION_COOKIE)
    tenant, _, session_id = (cookie or "").partition(".")
    agent = await accounts.session(tenant, session_id) if tenant and session_id else None
    if agent is None:
        raise _unauthorised("sign in first (or send Authorization: Bearer <token>)")
    if request.method not in SAFE_METHODS and not (
        csrf and agent.csrf and hmac.compare_digest(csrf.encode(), agent.csrf.encode())
    ):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"missing or wrong {CSRF_HEADER} header")
    return agent


Agent = Annotated[Principal, Depends(current_agent)]
# A handoff's id: the store's 64-bit key.
ConversationId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The conversation's id (the handoff's).")]


def _unauthorised(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


async def refused(_: Request, error: Exception) -> JSONResponse:
    """The desk's refusals (DeskError, the only exception it is registered for): the reason and its status."""
    return JSONResponse({"detail": str(error)}, status_code=_STATUS[cast(DeskError, error).kind])


# --- bodies ---


class SignIn(BaseModel):
    tenant: str = Field(pattern=TENANT_NAME_PATTERN, description="The tenant the agent works for.")
    email: str = Field(min_length=3, max_length=254)
    password: str = Field(min_length=1, max_length=1024)


class SignedIn(BaseModel):
    tenant: str
    email: str
    name: str
    csrf_token: str = Field(description=f"Send it in {CSRF_HEADER} on every request that changes something.")


class TakeBody(BaseModel):
    phone: str = Field(min_length=3, max_length=32, description="The customer's phone number, international format.")


class TemplateBody(BaseModel):
    name: str = Field(min_length=1, max_length=512)
    parameters: list[str] = Field(default_factory=list, max_length=20)


class MessageBody(BaseModel):
    text: str | None = Field(default=None, max_length=4096, description="Free text (inside the 24-hour window).")
    template: TemplateBody | None = Field(default=None, description="An approved template (any time).")

    @model_validator(mode="after")
    def _one_kind(self) -> MessageBody:
        if (self.text is None) == (self.template is None):
            raise ValueError("give either text or template")
        return self


class ResolveBody(BaseModel):
    message: str | None = Field(default=None, max_length=4096, description="A closing message for the customer.")


class TransferBody(BaseModel):
    agent: str | None = Field(default=None, max_length=254, description="The agent's email; null: back to the queue.")


class NoteBody(BaseModel):
    text: str = Field(min_length=1, max_length=4096)


class LabelsBody(BaseModel):
    labels: list[str] = Field(max_length=100)


class PriorityBody(BaseModel):
    priority: int = Field(ge=-100, le=100)


class ConversationOut(BaseModel):
    conversation: dict[str, Any]
    transcript: list[dict[str, Any]]
    timeline: list[dict[str, Any]]
    window_open: bool


def _detail(detail: Detail) -> ConversationOut:
    return ConversationOut(
        conversation=detail.summary.as_json(),
        transcript=[entry.as_json() for entry in detail.transcript],
        timeline=[entry.as_json() for entry in detail.timeline],
        window_open=detail.summary.window_open(datetime.now(UTC)),
    )


def _summary(summary: Summary) -> dict[str, Any]:
    return {**summary.as_json(), "window_open": summary.window_open(datetime.now(UTC))}


def _entry(entry: Entry) -> dict[str, Any]:
    return entry.as_json()


# --- routers ---


def session_router(settings: HandoffSettings) -> APIRouter:
    router = APIRouter(prefix="/api/v1/session", tags=["session"])

    @router.post("", responses=problems(401))
    async def sign_in(body: SignIn, response: Response, runtime: HandoffRuntime) -> SignedIn:
        """Sign in to the inbox: sets the session cookie and returns the CSRF token."""
        accounts, desk = runtime.parts.accounts, runtime.parts.desk
        agent = await accounts.verify(body.tenant, body.email, body.password)
        if agent is None:
            raise _unauthorised("wrong tenant, email or password")
        session = await accounts.open_session(agent)
        response.set_cookie(
            SESSION_COOKIE,
            f"{session.tenant}.{session.session_id}",
            max_age=settings.session_idle_s,
            httponly=True,
            samesite="strict",
            secure=settings.cookies_secure,
            path="/",
        )
        await desk.touch(agent.tenant, agent.email)
        return SignedIn(tenant=agent.tenant, email=agent.email, name=agent.name, csrf_token=session.csrf or "")

    @router.get("", responses=problems(401))
    async def who_am_i(agent: Agent) -> SignedIn:
        """The signed-in agent, and the session's CSRF token (for a page that was reloaded)."""
        return SignedIn(tenant=agent.tenant, email=agent.email, name=agent.name, csrf_token=agent.csrf or "")

    @router.delete("", status_code=status.HTTP_204_NO_CONTENT, responses=problems(401, 403))
    async def sign_out(agent: Agent, response: Response, runtime: HandoffRuntime) -> None:
        """Sign out: the session ends and the agent is offline."""
        if agent.session_id is not None:
            await runtime.parts.accounts.close_session(agent.tenant, agent.session_id)
        await runtime.parts.desk.leave(agent.tenant, agent.email)
        response.delete_cookie(SESSION_COOKIE, path="/")

    return router


def inbox_router(settings: HandoffSettings) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["conversations"])

    @router.get("/me", responses=problems(401))
    async def me(agent: Agent, runtime: HandoffRuntime) -> dict[str, Any]:
        """The agent, the tenant's templates, canned responses and labels, and the queue's figures."""
        desk = runtime.parts.desk
        tenant = runtime.connections.registry.by_name(agent.tenant)
        spec = tenant.spec.handoff if tenant is not None else None
        return {
            "agent": {"tenant": agent.tenant, "email": agent.email, "name": agent.name},
            "templates": [t.model_dump() | {"parameters": t.parameters} for t in spec.templates] if spec else [],
            "canned_responses": [c.model_dump() for c in spec.canned_responses] if spec else [],
            "labels": list(spec.labels) if spec else [],
            "max_open_per_agent": spec.max_open_per_agent if spec else 0,
            "figures": await desk.figures(agent.tenant),
        }

    @router.get("/agents", responses=problems(401))
    async def agents(agent: Agent, runtime: HandoffRuntime) -> list[dict[str, Any]]:
        """The tenant's agents, and who is online (for transfers)."""
        online = set(await runtime.parts.desk.online_agents(agent.tenant))
        return [
            {"email": a.email, "name": a.name, "online": a.email in online}
            for a in await runtime.parts.accounts.list(agent.tenant)
        ]

    @router.get("/conversations", responses=problems(401))
    async def conversations(
        agent: Agent,
        runtime: HandoffRuntime,
        state: Annotated[Literal["waiting", "assigned", "resolved"] | None, Query()] = None,
        mine: Annotated[bool, Query(description="Only the conversations assigned to me.")] = False,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> list[dict[str, Any]]:
        """Conversations with a person: open ones (or those in `state`), most urgent first."""
        found = await runtime.parts.desk.conversations(
            agent.tenant, state, agent=agent.email if mine else None, limit=limit
        )
        return [_summary(s) for s in found]

    @router.post("/conversations", status_code=status.HTTP_201_CREATED, responses=problems(400, 401, 403, 409))
    async def take(body: TakeBody, agent: Agent, runtime: HandoffRuntime) -> dict[str, Any]:
        """Take a customer's conversation from the bot (or claim it, when it waits in the queue)."""
        try:
            contact = normalise_phone(body.phone)
        except ErasureError as error:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(error)) from None
        return _summary(await runtime.parts.desk.take(agent.tenant, contact, agent.email))

    @router.get("/conversations/{conversation_id}", responses=problems(401, 404))
    async def read(conversation_id: ConversationId, agent: Agent, runtime: HandoffRuntime) -> ConversationOut:
        """One conversation: its state, the transcript (bot turns marked) and its timeline."""
        return _detail(await runtime.parts.desk.detail(agent.tenant, conversation_id))

    @router.post("/conversations/{conversation_id}/claim", responses=problems(401, 403, 404, 409))
    async def claim(conversation_id: ConversationId, agent: Agent, runtime: HandoffRuntime) -> dict[str, Any]:
        """Take a waiting conversation."""
        return _summary(await runtime.parts.desk.claim(agent.tenant, conversation_id, agent.email))

    @router.post("/conversations/{conversation_id}/transfer", responses=problems(401, 403, 404, 409))
    async def transfer(
        conversation_id: ConversationId, body: TransferBody, agent: Agent, runtime: HandoffRuntime
    ) -> dict[str, Any]:
        """Give the conversation to another agent of the tenant, or back to the queue."""
        accounts = runtime.parts.accounts
        if body.agent is not None and not await accounts.exists(agent.tenant, body.agent.strip().lower()):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"{body.agent} is not an agent of {agent.tenant}")
        target = body.agent.strip().lower() if body.agent else None
        return _summary(await runtime.parts.desk.transfer(agent.tenant, conversation_id, agent.email, target))

    @router.post(
        "/conversations/{conversation_id}/messages",
        status_code=status.HTTP_202_ACCEPTED,
        responses=problems(400, 401, 403, 404, 409),
    )
    async def send(
        conversation_id: ConversationId,
        body: MessageBody,
        agent: Agent,
        runtime: HandoffRuntime,
        idempotency_key: Annotated[str | None, Header(max_length=64)] = None,
    ) -> dict[str, Any]:
        """Send a reply: free text inside the 24-hour window, an approved template at any time (409 otherwise)."""
        desk = runtime.parts.desk
        if body.template is not None:
            template = body.template
            entry = await desk.send_template(
                agent.tenant, conversation_id, agent.email, template.name, template.parameters, idempotency_key
            )
        else:
            entry = await desk.reply(agent.tenant, conversation_id, agent.email, body.text or "", idempotency_key)
        return _entry(entry)

    @router.post("/conversations/{conversation_id}/resolve", responses=problems(401, 403, 404, 409))
    async def resolve(
        conversation_id: ConversationId, body: ResolveBody, agent: Agent, runtime: HandoffRuntime
    ) -> dict[str, Any]:
        """Hand the conversation back to the bot, optionally with a closing message."""
        return _summary(await runtime.parts.desk.resolve(agent.tenant, conversation_id, agent.email, body.message))

    @router.post(
        "/conversations/{conversation_id}/notes",
        status_code=status.HTTP_201_CREATED,
        responses=problems(400, 401, 403, 404),
    )
    async def note(
        conversation_id: ConversationId, body: NoteBody, agent: Agent, runtime: HandoffRuntime
    ) -> dict[str, Any]:
        """Add a private note (agents only; never sent to the customer)."""
        return _entry(await runtime.parts.desk.note(agent.tenant, conversation_id, agent.email, body.text))

    @router.put("/conversations/{conversation_id}/labels", responses=problems(400, 401, 403, 404))
    async def labels(
        conversation_id: ConversationId, body: LabelsBody, agent: Agent, runtime: HandoffRuntime
    ) -> dict[str, Any]:
        """Set the conversation's labels (from the tenant's list)."""
        return _summary(await runtime.parts.desk.set_labels(agent.tenant, conversation_id, agent.email, body.labels))

    @router.put("/conversations/{conversation_id}/priority", responses=problems(401, 403, 404))
    async def priority(
        conversation_id: ConversationId, body: PriorityBody, agent: Agent, runtime: HandoffRuntime
    ) -> dict[str, Any]:
        """Set the conversation's place in the queue (higher first)."""
        return _summary(
            await runtime.parts.desk.set_priority(agent.tenant, conversation_id, agent.email, body.priority)
        )

    @router.get("/events", response_class=EventSourceResponse, responses=problems(401))
    async def events(agent: Agent, runtime: HandoffRuntime) -> EventSourceResponse:
        """Server-sent events: the tenant's inbox activity as it happens; keeps the agent online."""
        desk, feed = runtime.parts.desk, runtime.parts.feed

        async def stream() -> AsyncIterator[ServerSentEvent]:
            with feed.subscribe(agent.tenant) as queue:
                # Subscribed first: nothing that happens after "ready" can be missed.
                await desk.touch(agent.tenant, agent.email)
                yield ServerSentEvent(event="ready", data=json.dumps({"agent": agent.email}))
                try:
                    while True:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(PRESENCE_EVERY_S):
                                activity = await queue.get()
                                yield ServerSentEvent(event=activity["event"], data=json.dumps(activity))
                                continue
                        await desk.touch(agent.tenant, agent.email)
                        yield ServerSentEvent(event="presence", data="{}")
                finally:
                    with contextlib.suppress(Exception):  # the client left; presence expires anyway
                        await desk.leave(agent.tenant, agent.email)

        return EventSourceResponse(stream())

    return router
