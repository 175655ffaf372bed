"""A local OpenAI-compatible chat completions server whose answers each test scripts.

    fake = FakeOpenAI()
    fake.script(ToolCall("lookup", {"id": 1}), Text("done"))   # the next two requests
    async with serve(fake.app()) as url:
        ... base_url=f"{url}/v1" ...
    fake.requests[0].messages                                   # what the client sent

Each request takes the next scripted behaviour, or `fake.default` once the script is used
up (an echo of the last user message unless a test sets another). Every request is recorded,
headers included, before it is answered.

It also serves `/v1/embeddings`: each text becomes a hashed bag of its words, a unit vector of
`fake.embedding_dimensions` numbers (texts sharing words are near), recorded in
`fake.embedding_requests`. A test changes the dimensions to have the server answer wrong.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

# A hanging request is released by its event; this bound only keeps a test that forgets to
# set the event from holding the server for the whole test timeout.
HANG_LIMIT_S = 30.0
EMBEDDING_DIMENSIONS = 64
WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class ReceivedRequest:
    body: dict[str, Any]
    headers: Mapping[str, str]  # names in lower case
    peer: str  # the client's host:port: requests over one kept-alive connection share it

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.body["messages"]
        return messages

    @property
    def inputs(self) -> list[str]:
        """The texts of an embeddings request."""
        texts = self.body["input"]
        return [texts] if isinstance(texts, str) else list(texts)


@dataclass(frozen=True)
class Echo:
    """Answer "You said: <content of the last user message>"."""


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: Mapping[str, Any] | str  # a string is sent as is (e.g. invalid JSON)
    call_id: str = "call_1"


@dataclass(frozen=True)
class Message:
    """A completion whose choice carries this message verbatim (null or non-string content...)."""

    message: Mapping[str, Any]


@dataclass(frozen=True)
class Hang:
    """Hold the request until the event is set, then echo."""

    release: asyncio.Event


@dataclass(frozen=True)
class Raw:
    """Any status and body: HTTP errors, an empty choices list, a body that is not JSON."""

    body: str
    status: int = 200
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


Behaviour = Echo | Text | ToolCall | Message | Hang | Raw

NO_CHOICES = Raw(json.dumps({"id": "chatcmpl-empty", "object": "chat.completion", "created": 0, "choices": []}))
NOT_JSON = Raw('{"id": "chatcmpl-broken", "choices": [', content_type="application/json")
SERVER_ERROR = Raw(json.dumps({"error": {"message": "model crashed", "type": "server_error"}}), status=500)


def _words(text: object) -> int:
    return len(text.split()) if isinstance(text, str) else 0


def hashed_words(text: str, dimensions: int) -> list[float]:
    """A unit vector counting the text's words, each in a bucket chosen by its hash."""
    vector = [0.0] * dimensions
    for word in WORD.findall(text.casefold()):
        bucket = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big") % dimensions
        vector[bucket] += 1.0
    norm = math.sqrt(sum(value * value for value in vector)) or 1.0
    return [value / norm for value in vector]


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"])
    return ""


class FakeOpenAI:
    def __init__(self, default: Behaviour | None = None, embedding_dimensions: int = EMBEDDING_DIMENSIONS) -> None:
        self.default: Behaviour = default or Echo()
        self.requests: list[ReceivedRequest] = []
        self.embedding_dimensions = embedding_dimensions
        self.embedding_requests: list[ReceivedRequest] = []
        self._script: deque[Behaviour] = deque()
        self._ids = itertools.count(1)

    def script(self, *behaviours: Behaviour) -> None:
        """Answer the next requests with these behaviours, in order."""
        self._script.extend(behaviours)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request) -> Response:
            body = await request.json()
            self.requests.append(_received(body, request))
            behaviour = self._script.popleft() if self._script else self.default
            return await self._respond(behaviour, body)

        @app.post("/v1/embeddings")
        async def embeddings(request: Request) -> Response:
            received = _received(await request.json(), request)
            self.embedding_requests.append(received)
            texts = received.inputs
            data = [
                {"object": "embedding", "index": index, "embedding": hashed_words(text, self.embedding_dimensions)}
                for index, text in enumerate(texts)
            ]
            tokens = sum(_words(text) for text in texts)
            usage = {"prompt_tokens": tokens, "total_tokens": tokens}
            return JSONResponse({"object": "list", "data": data, "model": received.body["model"], "usage": usage})

        return app

    async def _respond(self, behaviour: Behaviour, body: dict[str, Any]) -> Response:
        messages: list[dict[str, Any]] = body.get("messages", [])
        match behaviour:
            case Raw(text, status, content_type, headers):
                return Response(text, status_code=status, media_type=content_type, headers=dict(headers))
            case Hang(release):
                await asyncio.wait_for(release.wait(), HANG_LIMIT_S)
                return self._completion(messages, {"role": "assistant", "content": self._echo(messages)})
            case Text(text):
                return self._completion(messages, {"role": "assistant", "content": text})
            case ToolCall(name, arguments, call_id):
                raw_arguments = arguments if isinstance(arguments, str) else json.dumps(dict(arguments))
                call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": raw_arguments}}
                return self._completion(messages, {"role": "assistant", "content": None, "tool_calls": [call]})
            case Message(message):
                return self._completion(messages, dict(message))
            case Echo():
                return self._completion(messages, {"role": "assistant", "content": self._echo(messages)})

    @staticmethod
    def _echo(messages: list[dict[str, Any]]) -> str:
        return f"You said: {_last_user_text(messages)}"

    def _completion(self, messages: list[dict[str, Any]], message: dict[str, Any]) -> JSONResponse:
        # Token counts are word counts: deterministic, so tests can assert on their sums.
        prompt_tokens = sum(_words(m.get("content")) for m in messages)
        completion_tokens = _words(message.get("content"))
        finish_reason = "tool_calls" if message.get("tool_calls") else "stop"
        return JSONResponse(
            {
                "id": f"chatcmpl-{next(self._ids)}",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": "fake",
                "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )


def _received(body: dict[str, Any], request: Request) -> ReceivedRequest:
    peer = f"{request.client.host}:{request.client.port}" if request.client else ""
    headers = {name.lower(): value for name, value in request.headers.items()}
    return ReceivedRequest(body=body, headers=headers, peer=peer)
