"""The openai responder against a local OpenAI-compatible server, over real HTTP, and its tools."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tests.support.http import serve
from tests.support.openai_server import (
    NO_CHOICES,
    NOT_JSON,
    SERVER_ERROR,
    Behaviour,
    FakeOpenAI,
    Hang,
    Message,
    Raw,
    Text,
    ToolCall,
)
from tests.support.tenants import tenant_document
from tests.support.turns import ErrorLog
from zapflow.conversation.llm import MAX_RETRIES, MAX_TOOL_ROUNDS, RETRY_WAIT_ALLOWANCE_S, OpenAIResponder
from zapflow.conversation.responder import Answer, TurnInput
from zapflow.conversation.tools import Tool, ToolError, ToolRegistry, ToolResult, default_tools
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.files import parse_tenant
from zapflow.tenants.model import BotTenant
from zapflow.v1 import inbound_pb2
from zapflow.whatsapp.messages import HistoryEntry

FALLBACK = "Our assistant is unavailable, a person will answer soon."


@dataclass
class LocalOpenAI:
    fake: FakeOpenAI
    base_url: str


@pytest.fixture
async def llm() -> AsyncIterator[LocalOpenAI]:
    fake = FakeOpenAI()
    async with serve(fake.app()) as url:
        yield LocalOpenAI(fake, f"{url}/v1")


@pytest.fixture
def errors() -> ErrorLog:
    return ErrorLog()


@pytest.fixture
def development(tmp_path: Path) -> CoreSettings:
    return CoreSettings(environment="development", secrets_dir=tmp_path / "secrets")


@pytest.fixture
async def responder(development: CoreSettings, errors: ErrorLog) -> AsyncIterator[OpenAIResponder]:
    responder = OpenAIResponder(development, on_error=errors)
    yield responder
    await responder.aclose()


def openai_tenant(base_url: str, **settings: Any) -> BotTenant:
    document = tenant_document()
    document["spec"]["bot"] = {
        "responder": "openai",
        "openai": {"baseUrl": base_url, "model": "test-model", "temperature": 0.2, "maxTokens": 300, **settings},
        "fallback": {"text": FALLBACK},
    }
    return parse_tenant(document)


def text(body: str) -> inbound_pb2.InboundMessage:
    return inbound_pb2.InboundMessage(type="text", text=inbound_pb2.Text(body=body))


def turn(tenant: BotTenant, *messages: inbound_pb2.InboundMessage, history: tuple[HistoryEntry, ...] = ()) -> TurnInput:
    return TurnInput(
        turn_id="turn-1", tenant=tenant, contact="5511999990000", messages=messages or (text("hello"),), history=history
    )


def reply_text(answer: Answer) -> str:
    assert len(answer.replies) == 1
    return answer.replies[0].text


def assert_fallback(answer: Answer) -> None:
    assert answer.outcome == "error_fallback"
    assert [r.text for r in answer.replies] == [FALLBACK]


# --- The context sent to the model --------------------------------------------------------------


async def test_the_request_carries_system_prompt_history_in_order_then_the_burst(
    llm: LocalOpenAI, responder: OpenAIResponder, errors: ErrorLog
) -> None:
    tenant = openai_tenant(llm.base_url, systemPrompt="You sell bicycles.", historyTurns=2)
    history = (  # two turns are sent: a customer and a bot entry each
        HistoryEntry("customer", "too old to be sent"),
        HistoryEntry("bot", "also too old"),
        HistoryEntry("customer", "hi, my bike is broken"),
        HistoryEntry("bot", "Sorry to hear that. What happened?"),
        HistoryEntry("customer", "the frame cracked"),
        HistoryEntry("bot", "Oh no."),
    )
    burst = (
        inbound_pb2.InboundMessage(type="image", media=inbound_pb2.Media(kind="image", caption="look at this crack")),
        inbound_pb2.InboundMessage(
            type="location",
            location=inbound_pb2.Location(latitude=-23.550520, longitude=-46.633308, name="Shop", address="Main St 1"),
        ),
        text("is it covered by warranty?"),
    )

    answer = await responder.answer(turn(tenant, *burst, history=history))

    [request] = llm.fake.requests
    current = (
        "[image: look at this crack]\n[location Shop Main St 1 (-23.55052, -46.63331)]\nis it covered by warranty?"
    )
    assert request.messages == [
        {"role": "system", "content": "You sell bicycles."},
        {"role": "user", "content": "hi, my bike is broken"},
        {"role": "assistant", "content": "Sorry to hear that. What happened?"},
        {"role": "user", "content": "the frame cracked"},
        {"role": "assistant", "content": "Oh no."},
        {"role": "user", "content": current},
    ]
    assert request.body["model"] == "test-model"
    assert request.body["temperature"] == 0.2
    assert request.body["max_tokens"] == 300
    # The one tool every model is offered; the model answered without calling it.
    assert [tool["function"]["name"] for tool in request.body["tools"]] == ["handoff_to_human"]
    assert "tool_choice" not in request.body
    assert answer.outcome == "llm"
    assert reply_text(answer) == f"You said: {current}"
    # The fake's token counts are word counts.
    prompt_words = sum(len(str(m["content"]).split()) for m in request.messages)
    assert (answer.prompt_tokens, answer.completion_tokens) == (prompt_words, len(reply_text(answer).split()))
    assert answer.actions == ()
    assert errors.calls == []


async def test_history_turns_zero_sends_no_history(llm: LocalOpenAI, responder: OpenAIResponder) -> None:
    tenant = openai_tenant(llm.base_url, historyTurns=0)
    history = (HistoryEntry("customer", "earlier"), HistoryEntry("bot", "earlier answer"))

    await responder.answer(turn(tenant, text("now"), history=history))

    assert [m["role"] for m in llm.fake.requests[0].messages] == ["system", "user"]


async def test_a_reply_longer_than_whatsapp_allows_is_cut(llm: LocalOpenAI, responder: OpenAIResponder) -> None:
    llm.fake.script(Text("word " * 1200))

    answer = await responder.answer(turn(openai_tenant(llm.base_url)))

    assert answer.outcome == "llm"
    assert len(reply_text(answer)) <= 4096
    assert reply_text(answer).endswith("…")


async def test_a_completion_without_usage_still_answers(llm: LocalOpenAI, responder: OpenAIResponder) -> None:
    llm.fake.script(Raw(json.dumps({"choices": [{"message": {"role": "assistant", "content": "Hi!"}}]})))

    answer = await responder.answer(turn(openai_tenant(llm.base_url)))

    assert (answer.outcome, reply_text(answer)) == ("llm", "Hi!")
    assert (answer.prompt_tokens, answer.completion_tokens) == (0, 0)


async def test_one_client_serves_a_tenant_across_turns(llm: LocalOpenAI, responder: OpenAIResponder) -> None:
    tenant = openai_tenant(llm.base_url)

    await responder.answer(turn(tenant, text("one")))
    await responder.answer(turn(tenant, text("two")))

    # The second request reuses the first one's kept-alive connection: same client, same pool.
    first, second = llm.fake.requests
    assert first.peer == second.peer


# --- Failures end in the tenant's fallback ------------------------------------------------------


async def test_a_timeout_gives_the_fallback_and_reports_timeout(
    llm: LocalOpenAI, responder: OpenAIResponder, errors: ErrorLog
) -> None:
    tenant = openai_tenant(llm.base_url, timeoutSeconds=0.3)
    release = asyncio.Event()
    llm.fake.default = Hang(release)
    try:
        started = time.monotonic()
        answer = await responder.answer(turn(tenant))
        elapsed = time.monotonic() - started
    finally:
        release.set()

    assert_fallback(answer)
    assert errors.calls == [(tenant.name, "timeout")]
    assert 1 <= len(llm.fake.requests) <= MAX_RETRIES + 1
    assert elapsed < 0.3 * (MAX_RETRIES + 1) + RETRY_WAIT_ALLOWANCE_S + 1.0


async def test_a_long_retry_after_cannot_hold_the_turn(
    llm: LocalOpenAI, responder: OpenAIResponder, errors: ErrorLog
) -> None:
    # The SDK honours Retry-After up to two minutes; the turn's deadline does not wait that long.
    tenant = openai_tenant(llm.base_url, timeoutSeconds=0.3)
    llm.fake.default = Raw('{"error": {"message": "slow down"}}', status=429, headers={"retry-after": "30"})

    started = time.monotonic()
    answer = await responder.answer(turn(tenant))

    assert_fallback(answer)
    assert errors.calls == [(tenant.name, "timeout")]
    assert time.monotonic() - started < 0.3 * (MAX_RETRIES + 1) + RETRY_WAIT_ALLOWANCE_S + 1.0


@pytest.mark.parametrize(
    ("behaviour", "kind"),
    [
        pytest.param(NO_CHOICES, "malformed", id="no-choices"),
        pytest.param(NOT_JSON, "malformed", id="not-json"),
        pytest.param(Raw("[1, 2]"), "malformed", id="json-not-a-completion"),
        pytest.param(Message({"role": "assistant", "content": None}), "malformed", id="null-content"),
        pytest.param(Message({"role": "assistant", "content": "   "}), "malformed", id="blank-content"),
        pytest.param(Message({"role": "assistant", "content": 42}), "malformed", id="content-not-a-string"),
        pytest.param(SERVER_ERROR, "http_status", id="http-500"),
        pytest.param(Raw('{"error": {"message": "bad key"}}', status=401), "http_status", id="http-401"),
    ],
)
async def test_a_broken_completion_gives_the_fallback(
    llm: LocalOpenAI, responder: OpenAIResponder, errors: ErrorLog, behaviour: Behaviour, kind: str
) -> None:
    tenant = openai_tenant(llm.base_url)
    llm.fake.default = behaviour  # every attempt, retries included

    answer = await responder.answer(turn(tenant))

    assert_fallback(answer)
    assert errors.calls == [(tenant.name, kind)]


async def test_one_transient_server_error_is_retried(
    llm: LocalOpenAI, responder: OpenAIResponder, errors: ErrorLog
) -> None:
    llm.fake.script(SERVER_ERROR)

    answer = await responder.answer(turn(openai_tenant(llm.base_url), text("still there?")))

    assert reply_text(answer) == "You said: still there?"
    assert len(llm.fake.requests) == 2
    assert errors.calls == []


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A port that is bound but not listening: connections are refused, and nobody else gets it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


async def test_a_refused_connection_gives_the_fallback(
    refused_url: str, responder: OpenAIResponder, errors: ErrorLog
) -> None:
    tenant = openai_tenant(refused_url)

    answer = await responder.answer(turn(tenant))

    assert_fallback(answer)
    assert errors.calls == [(tenant.name, "connection")]


async def test_a_failing_error_hook_does_not_break_the_answer(llm: LocalOpenAI, development: CoreSettings) -> None:
    def broken_hook(tenant: str, kind: str) -> None:
        raise RuntimeError("metrics are down")

    responder = OpenAIResponder(development, on_error=broken_hook)
    llm.fake.default = NO_CHOICES
    try:
        answer = await responder.answer(turn(openai_tenant(llm.base_url)))
    finally:
        await responder.aclose()

    assert_fallback(answer)


# --- API keys -----------------------------------------------------------------------------------


async def test_an_env_api_key_reaches_the_server_as_a_bearer_token(
    llm: LocalOpenAI, responder: OpenAIResponder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZF_TEST_LLM_KEY", "sk-env-123")

    await responder.answer(turn(openai_tenant(llm.base_url, apiKey={"env": "ZF_TEST_LLM_KEY"})))

    assert llm.fake.requests[0].headers["authorization"] == "Bearer sk-env-123"


async def test_a_mounted_secret_api_key_reaches_the_server(
    llm: LocalOpenAI, responder: OpenAIResponder, development: CoreSettings
) -> None:
    (development.secrets_dir / "llm").mkdir(parents=True)
    (development.secrets_dir / "llm" / "key").write_text("sk-file-456\n")
    tenant = openai_tenant(llm.base_url, apiKey={"secretKeyRef": {"name": "llm", "key": "key"}})

    await responder.answer(turn(tenant))

    assert llm.fake.requests[0].headers["authorization"] == "Bearer sk-file-456"


async def test_a_rotated_key_file_is_read_by_the_next_tenant_revision_only(
    llm: LocalOpenAI, responder: OpenAIResponder, development: CoreSettings
) -> None:
    key_file = development.secrets_dir / "llm" / "key"
    key_file.parent.mkdir(parents=True)
    key_file.write_text("sk-before\n")
    tenant = openai_tenant(llm.base_url, apiKey={"secretKeyRef": {"name": "llm", "key": "key"}})
    await responder.answer(turn(tenant))

    key_file.write_text("sk-after\n")
    await responder.answer(turn(tenant))
    await responder.answer(turn(parse_tenant(tenant.document())))  # as the registry parses a new revision

    sent = [request.headers["authorization"] for request in llm.fake.requests]
    assert sent == ["Bearer sk-before", "Bearer sk-before", "Bearer sk-after"]


async def test_without_a_key_a_placeholder_is_sent_never_the_environment_s(
    llm: LocalOpenAI, responder: OpenAIResponder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-platform-key")

    await responder.answer(turn(openai_tenant(llm.base_url)))

    assert llm.fake.requests[0].headers["authorization"] == "Bearer not-needed"


async def test_tenants_with_different_keys_do_not_share_a_client(llm: LocalOpenAI, responder: OpenAIResponder) -> None:
    await responder.answer(turn(openai_tenant(llm.base_url, apiKey={"value": "sk-a"})))
    await responder.answer(turn(openai_tenant(llm.base_url, apiKey={"value": "sk-b"})))

    first, second = llm.fake.requests
    assert (first.headers["authorization"], second.headers["authorization"]) == ("Bearer sk-a", "Bearer sk-b")
    assert first.peer != second.peer


async def test_an_inline_key_is_refused_outside_development(llm: LocalOpenAI, tmp_path: Path, errors: ErrorLog) -> None:
    production = CoreSettings(
        environment="production",
        admin_token=SecretStr("prod-admin"),
        pseudonym_secret=SecretStr("prod-pseudonyms"),
        secrets_dir=tmp_path,
    )
    responder = OpenAIResponder(production, on_error=errors)
    tenant = openai_tenant(llm.base_url, apiKey={"value": "sk-inline"})
    try:
        answer = await responder.answer(turn(tenant))
    finally:
        await responder.aclose()

    assert_fallback(answer)
    assert errors.calls == [(tenant.name, "secret")]
    assert llm.fake.requests == []


async def test_an_inline_key_is_accepted_in_development(llm: LocalOpenAI, responder: OpenAIResponder) -> None:
    answer = await responder.answer(turn(openai_tenant(llm.base_url, apiKey={"value": "sk-inline"})))

    assert answer.outcome == "llm"
    assert llm.fake.requests[0].headers["authorization"] == "Bearer sk-inline"


async def test_a_missing_env_key_gives_the_fallback(
    llm: LocalOpenAI, responder: OpenAIResponder, errors: ErrorLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ZF_TEST_MISSING_KEY", raising=False)
    tenant = openai_tenant(llm.base_url, apiKey={"env": "ZF_TEST_MISSING_KEY"})

    answer = await responder.answer(turn(tenant))

    assert_fallback(answer)
    assert errors.calls == [(tenant.name, "secret")]
    assert llm.fake.requests == []


# --- Tools --------------------------------------------------------------------------------------

ORDER_SCHEMA = {
    "type": "object",
    "properties": {"order_id": {"type": "string"}},
    "required": ["order_id"],
}


@dataclass
class OrderLookup:
    """A tool that records its calls and answers with a fixed result."""

    result: ToolResult
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def __call__(self, turn: TurnInput, arguments: dict[str, Any]) -> ToolResult:
        self.calls.append((turn.turn_id, arguments))
        return self.result

    def registry(self) -> ToolRegistry:
        return ToolRegistry([Tool("lookup_order", "Find an order by its id.", ORDER_SCHEMA, self)])


async def test_a_tool_call_runs_and_its_result_goes_back_to_the_model(
    llm: LocalOpenAI, development: CoreSettings, errors: ErrorLog
) -> None:
    lookup = OrderLookup(ToolResult(content="order 42 ships tomorrow", action="handoff"))
    responder = OpenAIResponder(development, tools=lookup.registry(), on_error=errors)
    llm.fake.script(ToolCall("lookup_order", {"order_id": "42"}, call_id="call_7"), Text("It ships tomorrow."))
    try:
        answer = await responder.answer(turn(openai_tenant(llm.base_url), text("where is order 42?")))
    finally:
        await responder.aclose()

    assert lookup.calls == [("turn-1", {"order_id": "42"})]
    first, second = llm.fake.requests
    assert first.body["tools"] == [
        {
            "type": "function",
            "function": {"name": "lookup_order", "description": "Find an order by its id.", "parameters": ORDER_SCHEMA},
        }
    ]
    assert "tool_choice" not in first.body
    assert second.messages[:2] == first.messages
    assert second.messages[2:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_7",
                    "type": "function",
                    "function": {"name": "lookup_order", "arguments": '{"order_id": "42"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_7", "content": "order 42 ships tomorrow"},
    ]
    assert answer.outcome == "llm"
    assert reply_text(answer) == "It ships tomorrow."
    assert answer.actions == ("handoff",)
    # Tokens of both completions are counted.
    assert answer.completion_tokens == 3  # "It ships tomorrow."
    assert answer.prompt_tokens > sum(len(str(m["content"]).split()) for m in first.messages)
    assert errors.calls == []


async def test_a_tool_s_final_reply_ends_the_turn(llm: LocalOpenAI, development: CoreSettings) -> None:
    lookup = OrderLookup(ToolResult(content="handed over", action="handoff", final_reply="A person will answer you."))
    responder = OpenAIResponder(development, tools=lookup.registry())
    llm.fake.script(ToolCall("lookup_order", {"order_id": "7"}))
    try:
        answer = await responder.answer(turn(openai_tenant(llm.base_url)))
    finally:
        await responder.aclose()

    assert len(llm.fake.requests) == 1
    assert answer.outcome == "llm"
    assert reply_text(answer) == "A person will answer you."
    assert answer.actions == ("handoff",)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        pytest.param(ToolCall("cancel_order", {}), "error: there is no tool named 'cancel_order'", id="unknown-tool"),
        pytest.param(ToolCall("lookup_order", "{not json"), "error: the arguments are not valid JSON", id="bad-json"),
    ],
)
async def test_a_bad_tool_call_is_reported_to_the_model_not_to_the_customer(
    llm: LocalOpenAI, development: CoreSettings, errors: ErrorLog, call: ToolCall, error: str
) -> None:
    lookup = OrderLookup(ToolResult(content="unused"))
    responder = OpenAIResponder(development, tools=lookup.registry(), on_error=errors)
    llm.fake.script(call, Text("Could you give me the order number?"))
    try:
        answer = await responder.answer(turn(openai_tenant(llm.base_url)))
    finally:
        await responder.aclose()

    tool_message = llm.fake.requests[1].messages[-1]
    assert tool_message["role"] == "tool"
    assert tool_message["content"].startswith(error)
    assert lookup.calls == []
    assert reply_text(answer) == "Could you give me the order number?"
    assert errors.calls == []


async def test_tool_rounds_are_bounded_then_the_model_must_answer(llm: LocalOpenAI, development: CoreSettings) -> None:
    lookup = OrderLookup(ToolResult(content="still looking"))
    responder = OpenAIResponder(development, tools=lookup.registry())
    llm.fake.script(*[ToolCall("lookup_order", {"order_id": str(i)}) for i in range(MAX_TOOL_ROUNDS)])
    llm.fake.default = Text("I could not find it.")
    try:
        answer = await responder.answer(turn(openai_tenant(llm.base_url)))
    finally:
        await responder.aclose()

    assert len(lookup.calls) == MAX_TOOL_ROUNDS
    assert len(llm.fake.requests) == MAX_TOOL_ROUNDS + 1
    assert [r.body.get("tool_choice") for r in llm.fake.requests] == [None] * MAX_TOOL_ROUNDS + ["none"]
    assert reply_text(answer) == "I could not find it."


async def test_a_model_that_keeps_calling_tools_gets_the_fallback_with_its_actions(
    llm: LocalOpenAI, development: CoreSettings, errors: ErrorLog
) -> None:
    lookup = OrderLookup(ToolResult(content="noted", action="follow_up"))
    responder = OpenAIResponder(development, tools=lookup.registry(), on_error=errors)
    llm.fake.default = ToolCall("lookup_order", {"order_id": "1"})  # ignores tool_choice "none"
    tenant = openai_tenant(llm.base_url)
    try:
        answer = await responder.answer(turn(tenant))
    finally:
        await responder.aclose()

    assert_fallback(answer)
    assert answer.actions == ("follow_up",)  # what the tools did is not lost
    assert answer.prompt_tokens > 0
    assert errors.calls == [(tenant.name, "malformed")]


# --- The registry on its own --------------------------------------------------------------------


def plain_turn() -> TurnInput:
    return turn(openai_tenant("http://127.0.0.1:9/v1"))


async def test_the_registry_turns_handler_failures_into_errors_for_the_model() -> None:
    async def strict(turn: TurnInput, arguments: dict[str, Any]) -> ToolResult:
        raise ToolError("order_id must be digits")

    async def crashing(turn: TurnInput, arguments: dict[str, Any]) -> ToolResult:
        raise RuntimeError("database password=hunter2 rejected")

    registry = ToolRegistry([Tool("strict", "", ORDER_SCHEMA, strict), Tool("crashing", "", ORDER_SCHEMA, crashing)])

    refused = await registry.call("strict", '{"order_id": "x"}', plain_turn())
    crashed = await registry.call("crashing", "{}", plain_turn())
    not_an_object = await registry.call("strict", "[1]", plain_turn())

    assert refused == ToolResult(content="error: order_id must be digits")
    assert crashed.content.startswith("error: the tool 'crashing' failed")
    assert "hunter2" not in crashed.content  # internals stay out of the prompt
    assert crashed.action is None
    assert crashed.final_reply is None
    assert not_an_object.content == "error: the arguments must be a JSON object"


async def test_empty_arguments_mean_no_arguments() -> None:
    lookup = OrderLookup(ToolResult(content="ok"))

    result = await lookup.registry().call("lookup_order", "", plain_turn())

    assert result.content == "ok"
    assert lookup.calls == [("turn-1", {})]


def test_tool_names_are_unique_and_valid() -> None:
    lookup = OrderLookup(ToolResult(content="ok"))
    registry = lookup.registry()

    with pytest.raises(ValueError, match="already registered"):
        registry.register(Tool("lookup_order", "again", ORDER_SCHEMA, lookup))
    with pytest.raises(ValueError, match="must match"):
        registry.register(Tool("look up", "spaces", ORDER_SCHEMA, lookup))
    assert registry.names == ("lookup_order",)
    assert json.loads(json.dumps(registry.definitions()))[0]["function"]["name"] == "lookup_order"


def test_every_model_may_hand_the_conversation_to_a_person() -> None:
    definitions = json.loads(json.dumps(default_tools().definitions()))
    assert [d["function"]["name"] for d in definitions] == ["handoff_to_human"]
    assert definitions[0]["function"]["parameters"]["required"] == ["reason"]
