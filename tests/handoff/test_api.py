"""The inbox's JSON API over real HTTP: sessions and CSRF, bearer tokens, a conversation from the queue to the
bot again, the 24-hour window, and one tenant's agents never reaching another's conversations.

The whole platform runs (sandbox, gateway, conversation, recorder, handoff) on real NATS, Redis and SQLite.
"""

from __future__ import annotations

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.handoff.conftest import (
    ASK,
    CUSTOMER,
    NOTICE,
    TEMPLATE,
    close_window,
    recorded,
    sent_of_type,
    waiting_conversation,
)
from tests.support.handoff import AGENT_PASSWORD, AgentApi
from tests.support.platform import Platform, eventually
from zapflow.handoff.api import CSRF_HEADER, SESSION_COOKIE


def session_cookie(answer: httpx.Response) -> str:
    [cookie] = [c for c in answer.headers.get_list("set-cookie") if c.startswith(f"{SESSION_COOKIE}=")]
    return cookie


async def test_sessions_need_the_csrf_token_to_write_and_tokens_do_not(platform: Platform, agent: AgentApi) -> None:
    tenant = platform.tenant.name
    async with httpx.AsyncClient(base_url=platform.handoff_url, timeout=10) as browser:
        wrong = await browser.post(
            "/api/v1/session", json={"tenant": tenant, "email": agent.email, "password": "not the password"}
        )
        unknown = await browser.post(
            "/api/v1/session", json={"tenant": tenant, "email": "nobody@example.com", "password": AGENT_PASSWORD}
        )
        # The same reason whichever part was wrong: an attacker learns nothing about who is an agent.
        assert (wrong.status_code, unknown.status_code) == (401, 401)
        assert wrong.json()["detail"] == unknown.json()["detail"] == "wrong tenant, email or password"
        assert SESSION_COOKIE not in browser.cookies

        signed_in = await browser.post(
            "/api/v1/session", json={"tenant": tenant, "email": agent.email, "password": AGENT_PASSWORD}
        )
        assert signed_in.status_code == 200, signed_in.text
        attributes = {part.strip().lower() for part in session_cookie(signed_in).split(";")}
        assert {"httponly", "samesite=strict", "path=/"} <= attributes
        csrf = signed_in.json()["csrf_token"]
        assert (await browser.get("/api/v1/session")).json() == signed_in.json()

        # Reading needs the cookie only; writing also needs the session's CSRF token.
        assert (await browser.get("/api/v1/conversations")).status_code == 200
        take = {"phone": "+55 11 90000-0001"}
        assert (await browser.post("/api/v1/conversations", json=take)).status_code == 403
        forged = await browser.post("/api/v1/conversations", json=take, headers={CSRF_HEADER: "a guess"})
        assert forged.status_code == 403
        assert forged.json()["detail"] == f"missing or wrong {CSRF_HEADER} header"
        taken = await browser.post("/api/v1/conversations", json=take, headers={CSRF_HEADER: csrf})
        assert taken.status_code == 201, taken.text
        assert (taken.json()["status"], taken.json()["agent"]) == ("assigned", agent.email)

        assert (await browser.delete("/api/v1/session")).status_code == 403
        assert (await browser.delete("/api/v1/session", headers={CSRF_HEADER: csrf})).status_code == 204
        assert (await browser.get("/api/v1/conversations")).status_code == 401

    # A bearer token writes without any CSRF token: there is no cookie to ride on.
    noted = await agent.http.post(f"/api/v1/conversations/{taken.json()['id']}/notes", json={"text": "called back"})
    assert noted.status_code == 201, noted.text
    assert (await agent.http.get("/api/v1/me")).json()["agent"]["email"] == agent.email


async def test_a_conversation_from_the_queue_back_to_the_bot_seen_by_its_tenant_only(
    platform: Platform, agent: AgentApi, stranger: AgentApi, database: AsyncEngine
) -> None:
    await platform.say(CUSTOMER, ASK)
    assert await platform.wait_for_texts(CUSTOMER, 1) == [NOTICE]

    conversation = await waiting_conversation(agent)
    path = f"/api/v1/conversations/{conversation['id']}"
    assert (conversation["reason"], conversation["agent"]) == ("customer_asked", None)
    assert conversation["window_open"] is True

    # Another tenant's agent: the conversation is as missing as one that never was.
    assert await stranger.conversations() == []
    assert (await stranger.http.get(path)).status_code == 404
    assert (await stranger.http.post(f"{path}/claim")).status_code == 404
    assert (await stranger.reply(conversation["id"], "hello?")).status_code == 404

    claimed = await agent.http.post(f"{path}/claim")
    assert claimed.status_code == 200, claimed.text
    assert (claimed.json()["status"], claimed.json()["agent"]) == ("assigned", agent.email)
    replied = await agent.reply(conversation["id"], "Oi! Aqui é a Ana, como posso ajudar?", "reply-1")
    assert replied.status_code == 202, replied.text
    assert await platform.wait_for_texts(CUSTOMER, 2) == [NOTICE, "Oi! Aqui é a Ana, como posso ajudar?"]
    # The same key again is the same message: the customer's texts at the end show it went out once.
    assert (await agent.reply(conversation["id"], "Oi! Aqui é a Ana, como posso ajudar?", "reply-1")).status_code == 202

    # A day later the customer's 24-hour window is closed: free text is refused, a template goes out.
    await recorded(agent, conversation["id"], ASK)
    await close_window(database, platform.tenant.name)
    late = await agent.reply(conversation["id"], "Ainda está aí?")
    assert late.status_code == 409
    assert "24-hour window is closed" in late.json()["detail"]
    assert "template" in late.json()["detail"]
    assert (await agent.http.get(path)).json()["window_open"] is False
    template = {"name": TEMPLATE["name"], "parameters": ["Maria", "seu pedido"]}
    sent = await agent.http.post(f"{path}/messages", json={"template": template}, headers={"Idempotency-Key": "t-1"})
    assert sent.status_code == 202, sent.text
    assert (sent.json()["role"], sent.json()["text"]) == ("agent", "Olá Maria, podemos continuar sobre seu pedido?")
    [delivered] = await eventually(lambda: sent_of_type(platform, "template"), what="the template in the sandbox")
    assert delivered["template"]["name"] == TEMPLATE["name"]
    assert delivered["template"]["language"]["code"] == "pt_BR"
    [body] = delivered["template"]["components"]
    assert [p["text"] for p in body["parameters"]] == ["Maria", "seu pedido"]

    resolved = await agent.resolve(conversation["id"])
    assert (resolved["status"], resolved["resolved_by"]) == ("resolved", agent.email)
    assert await agent.conversations() == []

    # Handed back: the bot answers the customer's next message by the tenant's rules.
    await platform.say(CUSTOMER, "what is the price?")

    async def bot_answered() -> list[str] | None:
        texts = [payload["text"]["body"] for payload in await sent_of_type(platform, "text")]
        return texts if "It costs $10." in texts else None

    assert await eventually(bot_answered, what="the bot's answer") == [
        NOTICE,
        "Oi! Aqui é a Ana, como posso ajudar?",
        "It costs $10.",
    ]


async def test_the_openapi_document_covers_the_api_only_and_the_pages_forbid_framing(platform: Platform) -> None:
    async with httpx.AsyncClient(base_url=platform.handoff_url, timeout=10) as client:
        document = (await client.get("/api/v1/openapi.json")).json()
        docs = await client.get("/api/v1/docs")
        home = await client.get("/")
        inbox = await client.get("/inbox/")
        script = await client.get("/inbox/inbox.js")

    assert document["paths"]
    assert all(path.startswith("/api/v1/") for path in document["paths"])
    assert {"/api/v1/session", "/api/v1/conversations/{conversation_id}/messages", "/api/v1/events"} <= set(
        document["paths"]
    )
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert CSRF_HEADER in document["info"]["description"]
    assert document["paths"]["/api/v1/session"]["post"]["security"] == []

    assert docs.status_code == 200
    assert "/api/v1/conversations/{conversation_id}/claim" in docs.text
    assert "MessageBody" in docs.text
    assert (home.status_code, home.headers["location"]) == (307, "/inbox/")
    assert script.headers["content-type"].startswith("text/javascript")
    for page in (inbox, docs, script):
        assert page.status_code == 200
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
        assert "'unsafe-inline'" not in policy
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["referrer-policy"] == "no-referrer"
    assert "<script>" not in inbox.text  # the script is a file: the policy allows no inline script
