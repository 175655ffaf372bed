"""The agent inbox's pages: the single-page inbox (plain HTML, CSS and JavaScript, no build step),
the OpenAPI document of /api/v1 and a page that shows it.

The page, its script and its style are package files read once when the router is made. Every page
forbids inline script, framing and referrers: data from customers only ever reaches the DOM as text.
"""

from __future__ import annotations

import copy
import html
import re
from collections.abc import Iterator
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from zapflow.handoff.api import CSRF_HEADER, SESSION_COOKIE
from zapflow.handoff.settings import HandoffSettings

API_PREFIX = "/api/v1/"
INBOX_PATH = "/inbox/"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    # The files change with a deployment: the browser asks again (and gets a 200 or the same bytes).
    "Cache-Control": "no-cache",
}
API_DESCRIPTION = f"""The agents' inbox API: the queue, conversations with a person, replies and templates.

Authenticate with either:

- `Authorization: Bearer <token>` (create one with `zapflow agent token`); no CSRF token needed;
- the inbox's session cookie `{SESSION_COOKIE}` (POST /api/v1/session): then every request that changes
  something (POST, PUT, DELETE) must send the session's CSRF token, from the sign-in answer or
  GET /api/v1/session, in the `{CSRF_HEADER}` header, or it is refused with 403.

Every read and write is scoped to the agent's tenant: another tenant's conversation answers 404.
Send an `Idempotency-Key` header with each message: a retried request with the same key sends one message.
"""


def pages_router(settings: HandoffSettings) -> APIRouter:
    router = APIRouter(tags=["pages"], include_in_schema=False)
    files = resources.files("zapflow.handoff")
    page = files.joinpath("inbox.html").read_text(encoding="utf-8")
    script = files.joinpath("inbox.js").read_text(encoding="utf-8")
    style = files.joinpath("inbox.css").read_text(encoding="utf-8")

    @router.get("/")
    async def root() -> RedirectResponse:
        """The inbox is the service's home page."""
        return RedirectResponse(INBOX_PATH, headers=SECURITY_HEADERS)

    @router.get("/inbox")
    async def inbox_without_slash() -> RedirectResponse:
        """The inbox lives at /inbox/ (its files are relative to it)."""
        return RedirectResponse(INBOX_PATH, headers=SECURITY_HEADERS)

    @router.get(INBOX_PATH)
    async def inbox() -> HTMLResponse:
        """The agents' inbox: sign in, the queue, a conversation, replies."""
        return HTMLResponse(page, headers=SECURITY_HEADERS)

    @router.get(f"{INBOX_PATH}inbox.js")
    async def inbox_script() -> Response:
        """The inbox's script."""
        return Response(script, media_type="text/javascript; charset=utf-8", headers=SECURITY_HEADERS)

    @router.get(f"{INBOX_PATH}inbox.css")
    async def inbox_style() -> Response:
        """The inbox's style (the API docs page uses it too)."""
        return Response(style, media_type="text/css; charset=utf-8", headers=SECURITY_HEADERS)

    @router.get(f"{API_PREFIX}openapi.json")
    async def openapi_document(request: Request) -> dict[str, Any]:
        """The OpenAPI document of the /api/v1 routes."""
        return api_document(request.app.openapi())

    @router.get(f"{API_PREFIX}docs")
    async def api_docs(request: Request) -> HTMLResponse:
        """The /api/v1 routes, readable in a browser without anything from the Internet."""
        return HTMLResponse(docs_page(api_document(request.app.openapi())), headers=SECURITY_HEADERS)

    return router


def api_document(full: dict[str, Any]) -> dict[str, Any]:
    """The service's OpenAPI document cut to /api/v1, with how to authenticate."""
    document = copy.deepcopy(full)  # app.openapi() caches its document: never change that one
    document["paths"] = {path: item for path, item in document["paths"].items() if path.startswith(API_PREFIX)}
    document["info"] = {**document["info"], "title": "zapflow inbox API", "description": API_DESCRIPTION}
    schemes = document.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An agent's API token (`zapflow agent token`); no CSRF token needed.",
    }
    schemes["session"] = {
        "type": "apiKey",
        "in": "cookie",
        "name": SESSION_COOKIE,
        "description": f"The inbox's session (POST /api/v1/session); writes also need {CSRF_HEADER}.",
    }
    document["security"] = [{"bearer": []}, {"session": []}]
    signing_in = document["paths"].get(f"{API_PREFIX}session", {}).get("post")
    if signing_in is not None:
        signing_in["security"] = []
    return document


def docs_page(document: dict[str, Any]) -> str:
    """The document as a list of operations: method, path, summary, parameters, body and responses."""
    info = document["info"]
    sections = "\n".join(_operation(method, path, operation) for path, method, operation in _operations(document))
    description = "\n".join(_paragraph(text) for text in info.get("description", "").split("\n\n"))
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(info["title"])}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{INBOX_PATH}inbox.css">
</head>
<body class="docs">
<header><h1>{html.escape(info["title"])} <small>{html.escape(str(info.get("version", "")))}</small></h1></header>
<main>
<section class="about">{description}
<p><a href="{API_PREFIX}openapi.json">The OpenAPI document (JSON)</a> · <a href="{INBOX_PATH}">The inbox</a></p>
</section>
{sections}
</main>
</body>
</html>
"""


def _paragraph(text: str) -> str:
    """A paragraph of the description: a list when its lines start with "- ", `code` as code."""
    items = re.split(r"^- |\n- ", text.strip())
    if len(items) > 1 and not items[0]:
        return "<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in items[1:]) + "</ul>"
    return f"<p>{_inline(text)}</p>"


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(" ".join(text.split())))


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                yield path, method, operation


def _operation(method: str, path: str, operation: dict[str, Any]) -> str:
    rows = []
    for parameter in operation.get("parameters", []):
        schema = parameter.get("schema", {})
        required = "required" if parameter.get("required") else "optional"
        rows.append(
            f"<li><code>{html.escape(parameter['name'])}</code> ({html.escape(parameter['in'])}, {required}, "
            f"{html.escape(_type_name(schema))}){_described(parameter.get('description') or schema.get('description'))}"
            "</li>"
        )
    body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    responses = "".join(
        f"<li><code>{html.escape(code)}</code> {html.escape(answer.get('description', ''))}{_returned(answer)}</li>"
        for code, answer in operation.get("responses", {}).items()
    )
    anchor = html.escape(operation.get("operationId", f"{method}-{path}"))
    return f"""<section class="operation" id="{anchor}">
<h2><span class="method {method}">{method.upper()}</span> <code>{html.escape(path)}</code></h2>
<p>{html.escape(operation.get("summary", ""))}</p>
<p class="doc">{_inline(operation.get("description", ""))}</p>
{f"<h3>Parameters</h3><ul>{''.join(rows)}</ul>" if rows else ""}
{f"<h3>Request body</h3><p><code>{html.escape(_type_name(body))}</code></p>" if body else ""}
<h3>Responses</h3><ul>{responses}</ul>
</section>"""


def _type_name(schema: dict[str, Any]) -> str:
    """A schema as a reader names it: the model's name, or its type."""
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_type_name(option) for option in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list of {_type_name(schema.get('items', {}))}"
    if "enum" in schema:
        return " | ".join(str(value) for value in schema["enum"])
    return str(schema.get("type", "any"))


def _returned(answer: dict[str, Any]) -> str:
    schema = answer.get("content", {}).get("application/json", {}).get("schema")
    return f" → <code>{html.escape(_type_name(schema))}</code>" if schema else ""


def _described(text: str | None) -> str:
    return f": {html.escape(text)}" if text else ""
