"""Calls to the WhatsApp Cloud API: request bodies from outbound commands, and error classes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp

from zapflow.v1 import outbound_pb2 as pb

# Meta's codes for "slow down": throughput, pair rate, spam rate, API call limits.
THROTTLE_CODES = frozenset({130429, 131056, 131048, 4, 80007, 613})
WINDOW_CLOSED = 131047
# The customer stopped marketing messages; only they can resume, by writing.
MARKETING_STOPPED = 131050
# The customer got enough marketing messages for now: hours, not seconds, before another.
MARKETING_LIMITED = 131049
# The template itself is wrong or unusable (parameters, missing, paused, disabled): permanent.
TEMPLATE_CODES = range(132000, 132017)


def graph_payload(command: pb.OutboundCommand) -> dict[str, Any]:
    """The JSON body of POST /{version}/{phone_number_id}/messages for a command."""
    kind = command.WhichOneof("body")
    if kind == "mark_read":
        read: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": command.mark_read.wamid,
        }
        if command.mark_read.typing:
            read["typing_indicator"] = {"type": "text"}
        return read
    payload: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": command.contact,
    }
    if command.reply_to_wamid:
        payload["context"] = {"message_id": command.reply_to_wamid}
    if kind == "text":
        payload["type"] = "text"
        payload["text"] = {"body": command.text.body, "preview_url": command.text.preview_url}
    elif kind == "interactive":
        payload["type"] = "interactive"
        payload["interactive"] = _interactive(command.interactive)
    elif kind == "template":
        template: dict[str, Any] = {
            "name": command.template.name,
            "language": {"code": command.template.language or "en_US"},
        }
        if command.template.components:
            template["components"] = [_component(c) for c in command.template.components]
        elif command.template.body_parameters:
            parameters = [{"type": "text", "text": p} for p in command.template.body_parameters]
            template["components"] = [{"type": "body", "parameters": parameters}]
        payload["type"] = "template"
        payload["template"] = template
    else:
        raise ValueError(f"outbound command {command.command_id} has no body")
    return payload


def _component(component: pb.TemplateComponent) -> dict[str, Any]:
    body: dict[str, Any] = {"type": component.type, "parameters": [_parameter(p) for p in component.parameters]}
    if component.type == "button":
        body["sub_type"] = component.sub_type or "quick_reply"
        body["index"] = str(component.index)
    return body


def _parameter(parameter: pb.TemplateParameter) -> dict[str, Any]:
    kind = parameter.type or "text"
    if kind == "text":
        return {"type": "text", "text": parameter.text}
    if kind == "payload":
        return {"type": "payload", "payload": parameter.text}
    return {"type": kind, kind: {"link": parameter.link}}


def _interactive(message: pb.OutInteractive) -> dict[str, Any]:
    body: dict[str, Any] = {"body": {"text": message.body}}
    if message.header:
        body["header"] = {"type": "text", "text": message.header}
    if message.footer:
        body["footer"] = {"text": message.footer}
    if message.HasField("list"):
        body["type"] = "list"
        body["action"] = {
            "button": message.list.button,
            "sections": [
                {
                    **({"title": section.title} if section.title else {}),
                    "rows": [
                        {"id": r.id, "title": r.title, **({"description": r.description} if r.description else {})}
                        for r in section.rows
                    ],
                }
                for section in message.list.sections
            ],
        }
    else:
        body["type"] = "button"
        body["action"] = {
            "buttons": [{"type": "reply", "reply": {"id": b.id, "title": b.title}} for b in message.buttons]
        }
    return body


class Outcome(StrEnum):
    SENT = "sent"
    RETRY = "retry"  # not delivered, safe to try again later
    WINDOW_CLOSED = "window_closed"
    MARKETING_STOPPED = "marketing_stopped"  # never market to them again until they write
    MARKETING_LIMITED = "marketing_limited"  # a campaign tries them again much later
    TEMPLATE_REJECTED = "template_rejected"  # the tenant must fix the template
    FAILED = "failed"  # Meta refused it for good
    UNCERTAIN = "uncertain"  # the request may have reached Meta: never resent


@dataclass(frozen=True)
class GraphResult:
    outcome: Outcome
    status_code: int = 0
    wamid: str = ""
    error_code: int = 0
    error_title: str = ""
    retry_after_s: float | None = None


_REFUSALS = {
    WINDOW_CLOSED: Outcome.WINDOW_CLOSED,
    MARKETING_STOPPED: Outcome.MARKETING_STOPPED,
    MARKETING_LIMITED: Outcome.MARKETING_LIMITED,
}


def classify(status: int, body: bytes, retry_after: str | None = None) -> GraphResult:
    """Turn a Graph API answer into what egress should do about it."""
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        parsed = {}
    if 200 <= status < 300:
        messages = parsed.get("messages") if isinstance(parsed, dict) else None
        wamid = str(messages[0].get("id", "")) if isinstance(messages, list) and messages else ""
        return GraphResult(Outcome.SENT, status, wamid=wamid)
    error = parsed.get("error", {}) if isinstance(parsed, dict) else {}
    code = int(error.get("code", 0)) if isinstance(error, dict) else 0
    title = str(error.get("message", "")) if isinstance(error, dict) else ""
    delay = float(retry_after) if retry_after and retry_after.isdigit() else None
    refused_for_good = _REFUSALS.get(code) or (Outcome.TEMPLATE_REJECTED if code in TEMPLATE_CODES else None)
    if refused_for_good is not None:
        return GraphResult(refused_for_good, status, error_code=code, error_title=title)
    if status == 429 or code in THROTTLE_CODES or status >= 500:
        return GraphResult(Outcome.RETRY, status, error_code=code, error_title=title, retry_after_s=delay)
    return GraphResult(Outcome.FAILED, status, error_code=code, error_title=title)


def classify_transport_error(error: Exception) -> GraphResult:
    """A request that never got an answer: retry only when it surely never left this host."""
    never_sent = isinstance(error, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
    outcome = Outcome.RETRY if never_sent else Outcome.UNCERTAIN
    return GraphResult(outcome, error_title=f"{type(error).__name__}: {error}")
