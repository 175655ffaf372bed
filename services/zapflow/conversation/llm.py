"""The `openai` responder: chat completions from any OpenAI-compatible endpoint, with tools.

A turn becomes one conversation with the model: the tenant's system prompt, the passages of
the tenant's knowledge base that bear on the question (grounding.py), the last entries of the
history, then the burst rendered by `describe()` as one user message. Tool calls run
through the ToolRegistry for a few rounds at most. Whatever fails (timeout, connection, HTTP
error, a completion that does not parse, a secret that does not resolve) gives the tenant's
fallback reply and an `on_error(tenant, reason)` call: the customer is never left without an
answer, and never sees a stack trace. A knowledge base that cannot be searched is not such a
failure: the turn is answered without its passages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import openai
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageParam,
    ChatCompletionToolChoiceOptionParam,
)
from pydantic import BaseModel, StrictStr, ValidationError
from pydantic import Field as ModelField

from zapflow.conversation.grounding import Grounding, ground, keep_given_citations
from zapflow.conversation.responder import Answer, TurnInput
from zapflow.conversation.tools import ToolRegistry, default_tools
from zapflow.knowledge.client import KnowledgeClient
from zapflow.platform.logging import get_logger
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.model import OpenAISpec, ReplySpec
from zapflow.tenants.secrets import ResolvedSecrets, SecretUnavailable
from zapflow.whatsapp.messages import describe

log = get_logger(__name__)

# WhatsApp refuses a text body longer than this.
WHATSAPP_TEXT_LIMIT = 4096
# One retry absorbs a dropped keep-alive connection or a transient 5xx; more would multiply
# the time a customer waits for the fallback.
MAX_RETRIES = 1
# The SDK waits up to 0.5 s before its retry, or as long as a Retry-After header says (up to
# two minutes): the deadline of one call allows the short wait, never the long one.
RETRY_WAIT_ALLOWANCE_S = 1.0
# Rounds in which the model may call tools; one more completion without tools follows.
MAX_TOOL_ROUNDS = 3
# Local servers need no key, but the SDK requires one; it also stops the SDK from reading
# OPENAI_API_KEY from the environment and sending the platform's key to a tenant's endpoint.
NO_API_KEY = "not-needed"

# on_error(tenant name, reason kind): timeout | connection | http_status | malformed | secret
# | config | unexpected. Low cardinality, fit for a metric label.
ErrorHook = Callable[[str, str], None]
FailureKind = Literal["timeout", "connection", "http_status", "malformed", "secret", "config", "unexpected"]


class CompletionFailed(Exception):
    """The turn cannot get an answer from the model; `detail` never holds message text."""

    def __init__(self, kind: FailureKind, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind: FailureKind = kind
        self.detail = detail


# The parts of a chat completion this responder reads, validated strictly: the SDK's own
# models accept anything (a missing choices list, a number as content) without complaint.
class _FunctionCall(BaseModel):
    name: StrictStr
    arguments: StrictStr


class _ToolCall(BaseModel):
    id: StrictStr
    type: Literal["function"] = "function"
    function: _FunctionCall


class _Message(BaseModel):
    content: StrictStr | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(BaseModel):
    message: _Message


class _Usage(BaseModel):
    # Only counted, never shown: tolerated when a server leaves the counts out.
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Completion(BaseModel):
    choices: list[_Choice] = ModelField(min_length=1)
    usage: _Usage | None = None


@dataclass
class _Progress:
    """What a turn has consumed and asked for so far; kept when it ends in the fallback."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    actions: list[str] = field(default_factory=list)

    def add_action(self, action: str) -> None:
        if action not in self.actions:
            self.actions.append(action)


def fit_whatsapp(text: str) -> str:
    """Cut a reply to WhatsApp's limit, with an ellipsis that shows it was cut."""
    if len(text) <= WHATSAPP_TEXT_LIMIT:
        return text
    return text[: WHATSAPP_TEXT_LIMIT - 1].rstrip() + "…"


def build_messages(
    turn: TurnInput, spec: OpenAISpec, grounding: Grounding | None = None
) -> list[ChatCompletionMessageParam]:
    """System prompt, grounding, the last `history_turns` turns (a customer and a bot entry each), then the burst."""
    messages: list[ChatCompletionMessageParam] = [{"role": "system", "content": spec.system_prompt}]
    if grounding is not None:
        # Next to the tenant's prompt: chat templates of several local models accept system
        # messages only at the start of the conversation.
        messages.append({"role": "system", "content": grounding.message})
    # history[-0:] would be the whole history: zero must mean none.
    recent = turn.history[-2 * spec.history_turns :] if spec.history_turns else ()
    for entry in recent:
        if entry.role == "customer":
            messages.append({"role": "user", "content": entry.text})
        else:
            messages.append({"role": "assistant", "content": entry.text})
    messages.append({"role": "user", "content": "\n".join(describe(message) for message in turn.messages)})
    return messages


class OpenAIResponder:
    name = "openai"

    def __init__(
        self,
        core: CoreSettings,
        tools: ToolRegistry | None = None,
        on_error: ErrorHook | None = None,
        knowledge: KnowledgeClient | None = None,
    ) -> None:
        """Without `knowledge`, no turn is grounded, whatever the tenant's spec says."""
        self._core = core
        self._tools = tools if tools is not None else default_tools()
        self._on_error = on_error
        self._knowledge = knowledge
        # One client (and connection pool) per endpoint and key, shared by the tenants that
        # use the same pair; a rotated key gets a new client.
        self._clients: dict[tuple[str, str], openai.AsyncOpenAI] = {}

    async def answer(self, turn: TurnInput) -> Answer:
        progress = _Progress()
        try:
            text = await self._converse(turn, progress)
        except CompletionFailed as failure:
            return self._fallback(turn, progress, failure)
        except Exception as error:
            # A bug of ours must still end in the fallback, not in a redelivery loop.
            log.exception("llm_unexpected_error", tenant=turn.tenant.name, turn_id=turn.turn_id)
            return self._fallback(turn, progress, CompletionFailed("unexpected", type(error).__name__))
        return Answer(
            "llm",
            (ReplySpec(text=fit_whatsapp(text)),),
            prompt_tokens=progress.prompt_tokens,
            completion_tokens=progress.completion_tokens,
            actions=tuple(progress.actions),
        )

    async def aclose(self) -> None:
        """Close every cached client's connections (at shutdown)."""
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            await client.close()

    async def _converse(self, turn: TurnInput, progress: _Progress) -> str:
        """The reply text: the model's words, or a tool's final reply."""
        spec = turn.tenant.spec.bot.openai
        if spec is None:
            raise CompletionFailed("config", "the tenant has no openai settings")
        client = self._client(spec, turn.tenant.secrets)
        grounding = await ground(self._knowledge, turn) if self._knowledge is not None else None
        messages = build_messages(turn, spec, grounding)
        for round_number in range(MAX_TOOL_ROUNDS + 1):
            tools_allowed = round_number < MAX_TOOL_ROUNDS
            completion = await self._complete(client, spec, messages, tools_allowed)
            if completion.usage is not None:
                progress.prompt_tokens += completion.usage.prompt_tokens or 0
                progress.completion_tokens += completion.usage.completion_tokens or 0
            message = completion.choices[0].message
            if not (tools_allowed and message.tool_calls):
                text = (message.content or "").strip()
                if grounding is not None:
                    # The answer names no source the model was not given.
                    text = keep_given_citations(text, grounding.sources)
                if not text:
                    raise CompletionFailed("malformed", "the completion has neither text nor tool calls")
                return text
            final_reply = await self._run_tools(turn, message, messages, progress)
            if final_reply:
                return final_reply
        raise AssertionError("unreachable: the last round allows no tool calls")

    async def _run_tools(
        self, turn: TurnInput, message: _Message, messages: list[ChatCompletionMessageParam], progress: _Progress
    ) -> str | None:
        """Run every call of the round, append the results, and return a final reply if a tool gave one."""
        calls = message.tool_calls or []
        messages.append(
            {
                "role": "assistant",
                "content": message.content,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.function.name, "arguments": call.function.arguments},
                    }
                    for call in calls
                ],
            }
        )
        final_reply: str | None = None
        # All calls run, even after one gave a final reply: each is an action the model chose.
        for call in calls:
            result = await self._tools.call(call.function.name, call.function.arguments, turn)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result.content})
            if result.action:
                progress.add_action(result.action)
            if final_reply is None and result.final_reply:
                final_reply = result.final_reply.strip() or None
        return final_reply

    async def _complete(
        self,
        client: openai.AsyncOpenAI,
        spec: OpenAISpec,
        messages: list[ChatCompletionMessageParam],
        tools_allowed: bool,
    ) -> _Completion:
        definitions: list[ChatCompletionFunctionToolParam] = self._tools.definitions()
        # With tools in the conversation, the last round keeps their definitions (servers
        # reject tool messages without them) but forbids calling them.
        tool_choice: ChatCompletionToolChoiceOptionParam | openai.Omit = (
            openai.omit if tools_allowed or not definitions else "none"
        )
        deadline_s = spec.timeout_seconds * (MAX_RETRIES + 1) + RETRY_WAIT_ALLOWANCE_S
        try:
            async with asyncio.timeout(deadline_s):
                # The raw response: the body is validated here, strictly, not by the SDK.
                response = await client.chat.completions.with_raw_response.create(
                    model=spec.model,
                    messages=messages,
                    temperature=spec.temperature,
                    max_tokens=spec.max_tokens,
                    tools=definitions or openai.omit,
                    tool_choice=tool_choice,
                    timeout=spec.timeout_seconds,
                )
        except (TimeoutError, openai.APITimeoutError) as error:
            raise CompletionFailed("timeout", f"no completion within {spec.timeout_seconds}s") from error
        except openai.APIConnectionError as error:
            raise CompletionFailed("connection", type(error).__name__) from error
        except openai.APIStatusError as error:
            # The body of the error may echo the prompt: only the status is kept.
            raise CompletionFailed("http_status", f"HTTP {error.status_code}") from error
        try:
            return _Completion.model_validate_json(response.content)
        except ValidationError as error:
            raise CompletionFailed("malformed", f"{error.error_count()} problems in the completion") from error

    def _client(self, spec: OpenAISpec, secrets: ResolvedSecrets) -> openai.AsyncOpenAI:
        api_key = NO_API_KEY
        if spec.api_key is not None:
            try:
                api_key = secrets.resolve(spec.api_key, self._core.secrets_dir, self._core.is_development)
            except SecretUnavailable as error:
                raise CompletionFailed("secret", str(error)) from error
        key = (spec.base_url, api_key)
        client = self._clients.get(key)
        if client is None:
            client = openai.AsyncOpenAI(base_url=spec.base_url, api_key=api_key, max_retries=MAX_RETRIES)
            self._clients[key] = client
        return client

    def _fallback(self, turn: TurnInput, progress: _Progress, failure: CompletionFailed) -> Answer:
        log.warning(
            "llm_fallback", tenant=turn.tenant.name, turn_id=turn.turn_id, reason=failure.kind, detail=failure.detail
        )
        if self._on_error is not None:
            try:
                self._on_error(turn.tenant.name, failure.kind)
            except Exception:
                log.exception("llm_error_hook_failed", tenant=turn.tenant.name)
        return Answer(
            "error_fallback",
            (turn.tenant.spec.bot.fallback,),
            prompt_tokens=progress.prompt_tokens,
            completion_tokens=progress.completion_tokens,
            actions=tuple(progress.actions),
        )
