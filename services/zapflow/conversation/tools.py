"""Tools a language model may call during a turn (handoff, follow-up, ...).

A tool is a name, a description, a JSON schema for its arguments and an async handler. The
registry renders the definitions OpenAI's `tools=` parameter expects and runs the calls the
model makes. Whatever goes wrong inside a call (an unknown tool, arguments that are not JSON,
a handler that raises) becomes an error string for the model, never an exception: the model
can correct itself, and the customer still gets an answer.

New tools are registered in `default_tools()` or by whoever builds the responder; neither the
engine nor the responder changes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from openai.types.chat import ChatCompletionFunctionToolParam

from zapflow.conversation.responder import TurnInput, handoff_action
from zapflow.platform.logging import get_logger

log = get_logger(__name__)

# OpenAI's rule for function names; other OpenAI-compatible servers follow it.
TOOL_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(frozen=True)
class ToolResult:
    """What a tool call produced.

    content: returned to the model as the tool message.
    action: a side effect for the engine and later services (e.g. "handoff"); it ends up in
        Answer.actions.
    final_reply: when set, this text is the bot's answer and the turn ends without asking
        the model again.
    """

    content: str
    action: str | None = None
    final_reply: str | None = None


class ToolError(Exception):
    """Raised by a handler for a problem the model can fix; the message is shown to the model.

    Any other exception is reported to the model without its message, which may hold
    internals that have no place in a prompt.
    """


ToolHandler = Callable[[TurnInput, dict[str, Any]], Awaitable[ToolResult]]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: Mapping[str, Any]  # a JSON schema of the arguments object
    handler: ToolHandler

    def definition(self) -> ChatCompletionFunctionToolParam:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": dict(self.parameters)},
        }


class ToolRegistry:
    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        if not TOOL_NAME_PATTERN.match(tool.name):
            raise ValueError(f"tool name {tool.name!r} must match {TOOL_NAME_PATTERN.pattern}")
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._tools)

    def definitions(self) -> list[ChatCompletionFunctionToolParam]:
        """The tools in the format of the chat completions `tools=` parameter."""
        return [tool.definition() for tool in self._tools.values()]

    async def call(self, name: str, raw_arguments: str, turn: TurnInput) -> ToolResult:
        """Run one tool call of the model; failures come back as an error for the model."""
        tool = self._tools.get(name)
        if tool is None:
            known = ", ".join(self._tools) or "none"
            return self._failed(turn, name, "unknown_tool", f"there is no tool named {name!r} (tools: {known})")
        try:
            # Models send "" for a function without parameters.
            arguments = json.loads(raw_arguments) if raw_arguments.strip() else {}
        except json.JSONDecodeError:
            return self._failed(turn, name, "invalid_json", "the arguments are not valid JSON")
        if not isinstance(arguments, dict):
            return self._failed(turn, name, "invalid_json", "the arguments must be a JSON object")
        try:
            return await tool.handler(turn, arguments)
        except ToolError as error:
            return self._failed(turn, name, "tool_error", str(error))
        except Exception:
            log.exception("tool_crashed", tenant=turn.tenant.name, turn_id=turn.turn_id, tool=name)
            return ToolResult(content=f"error: the tool {name!r} failed; do not call it again for this message")

    @staticmethod
    def _failed(turn: TurnInput, name: str, kind: str, explanation: str) -> ToolResult:
        # The name comes from the model (not from the customer's words), cut to a sane length.
        log.warning("tool_call_refused", tenant=turn.tenant.name, turn_id=turn.turn_id, tool=name[:64], kind=kind)
        return ToolResult(content=f"error: {explanation}")


HANDOFF_TOOL = "handoff_to_human"


async def _hand_to_human(turn: TurnInput, arguments: dict[str, Any]) -> ToolResult:
    reason = arguments.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise ToolError("give the reason in `reason`, in a few words")
    # The engine replaces the turn's reply with the tenant's handoff notice, unless handoff is off
    # for the tenant: then the model's next words are the answer.
    return ToolResult(
        content="A person from the team will take over. Tell the customer so, in one short sentence.",
        action=handoff_action("llm", " ".join(reason.split())),
    )


def handoff_tool() -> Tool:
    return Tool(
        name=HANDOFF_TOOL,
        description=(
            "Hand the conversation to a person from the business. Call it when the customer asks for a "
            "person, is upset, or needs something you cannot do."
        ),
        parameters={
            "type": "object",
            "properties": {"reason": {"type": "string", "description": "Why, in a few words, for the agent."}},
            "required": ["reason"],
        },
        handler=_hand_to_human,
    )


def default_tools() -> ToolRegistry:
    """The tools every tenant's model may call."""
    return ToolRegistry([handoff_tool()])
