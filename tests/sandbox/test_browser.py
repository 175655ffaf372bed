"""The web chat in a real browser (Debian's headless Chromium), talking to a stand-in bot."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from playwright.async_api import Page, expect

from tests.sandbox.helpers import APP_SECRET, GRAPH_HEADERS, NUMBER, WAIT_S, messages_url, running_sandbox
from tests.support.browser import screenshot_dir
from tests.support.http import serve
from zapflow.whatsapp.signature import SIGNATURE_HEADER, signature_matches

pytestmark = pytest.mark.browser

EXPECT_TIMEOUT_MS = WAIT_S * 1000


class StandInBot:
    """Plays zapflow behind the webhook: reads, types, echoes, and offers buttons or a list.

    A text starting with "quiet" is left unread and unanswered, so its single tick shows.
    """

    def __init__(self) -> None:
        self.sandbox_url = ""  # known once the sandbox runs
        self.interactive_replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._answers: set[asyncio.Task[None]] = set()
        self.app = FastAPI()
        self.app.add_api_route("/webhook/whatsapp", self._webhook, methods=["POST"])

    async def _webhook(self, request: Request) -> Response:
        body = await request.body()
        if not signature_matches(body, request.headers.get(SIGNATURE_HEADER), APP_SECRET):
            return Response(status_code=401)
        value = json.loads(body)["entry"][0]["changes"][0]["value"]
        for message in value.get("messages", []):
            if message["type"] == "interactive":
                await self.interactive_replies.put(message)
            elif message["type"] == "text" and not message["text"]["body"].startswith("quiet"):
                # Answered after the webhook returns, as the real platform does.
                task = asyncio.create_task(self._answer(message))
                self._answers.add(task)
        return Response(status_code=200)

    async def _answer(self, message: dict[str, Any]) -> None:
        text, customer = message["text"]["body"], message["from"]
        async with httpx.AsyncClient(base_url=self.sandbox_url, headers=GRAPH_HEADERS) as graph:
            for payload in [
                {"status": "read", "message_id": message["id"], "typing_indicator": {"type": "text"}},
                {"to": customer, "type": "text", "text": {"body": f"echo: {text}"}},
                self._menu(customer) if text == "menu" else self._buttons(customer),
            ]:
                sent = await graph.post(messages_url(), json={"messaging_product": "whatsapp", **payload})
                sent.raise_for_status()

    @staticmethod
    def _buttons(customer: str) -> dict[str, Any]:
        buttons = [{"type": "reply", "reply": {"id": i, "title": t}} for i, t in [("yes", "Yes"), ("no", "No")]]
        return {
            "to": customer,
            "type": "interactive",
            "interactive": {"type": "button", "body": {"text": "Did that help?"}, "action": {"buttons": buttons}},
        }

    @staticmethod
    def _menu(customer: str) -> dict[str, Any]:
        rows = [
            {"id": "track", "title": "Track my order", "description": "Where is my parcel?"},
            {"id": "human", "title": "Talk to a person"},
        ]
        return {
            "to": customer,
            "type": "interactive",
            "interactive": {
                "type": "list",
                "header": {"type": "text", "text": "Main menu"},
                "body": {"text": "How can we help?"},
                "footer": {"text": "Acme Store"},
                "action": {"button": "Options", "sections": [{"title": "Support", "rows": rows}]},
            },
        }

    async def next_interactive_reply(self) -> dict[str, Any]:
        async with asyncio.timeout(WAIT_S):
            return await self.interactive_replies.get()

    async def finish(self) -> None:
        """Surfaces any failure of an answer; a silent one would only look like a timeout."""
        await asyncio.gather(*self._answers)


async def test_a_customer_chats_with_the_bot_in_the_browser(page: Page, tmp_path: Path) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    bot = StandInBot()
    fast = {"status_sent_delay": 0.01, "status_delivered_delay": 0.01, "status_read_delay": 0.01}
    async with serve(bot.app) as bot_url, running_sandbox(webhook_url=f"{bot_url}/webhook/whatsapp", **fast) as sandbox:
        bot.sandbox_url = str(sandbox.base_url)
        await page.goto(bot.sandbox_url)

        await page.select_option("#number-select", NUMBER)
        await page.fill("#customer-phone", "+55 11 98888-7777")
        await page.fill("#customer-name", "Maria")
        await page.click("#open-chat")
        await expect(page.locator("#send-button")).to_be_enabled(timeout=EXPECT_TIMEOUT_MS)

        await page.fill("#composer-input", "hello bot")
        await page.press("#composer-input", "Enter")
        echo = page.locator(".msg.in", has_text="echo: hello bot")
        await expect(echo).to_be_visible(timeout=EXPECT_TIMEOUT_MS)
        await expect(page.locator(".msg.in", has_text="Did that help?")).to_be_visible(timeout=EXPECT_TIMEOUT_MS)
        yes = page.locator(".reply-button", has_text="Yes")
        await expect(yes).to_be_visible()
        await expect(page.locator(".reply-button", has_text="No")).to_be_visible()
        # The bot marked it read: blue double tick.
        hello = page.locator(".msg.out", has_text="hello bot")
        await expect(hello.locator(".tick")).to_have_attribute("data-state", "read", timeout=EXPECT_TIMEOUT_MS)

        # Unread by the bot: the gateway's 2xx alone gives a single tick.
        await page.fill("#composer-input", "quiet: no answer needed")
        await page.click("#send-button")
        quiet = page.locator(".msg.out", has_text="quiet: no answer needed")
        await expect(quiet.locator(".tick")).to_have_attribute("data-state", "sent", timeout=EXPECT_TIMEOUT_MS)
        await page.screenshot(path=screenshot_dir(tmp_path) / "web-chat.png")

        await yes.click()
        tapped = await bot.next_interactive_reply()
        sent = (await sandbox.get("/sandbox/messages", params={"phone_number_id": NUMBER})).json()["messages"]
        buttons_wamid = next(m["wamid"] for m in sent if m["type"] == "interactive")
        assert tapped["interactive"] == {"type": "button_reply", "button_reply": {"id": "yes", "title": "Yes"}}
        assert tapped["context"]["id"] == buttons_wamid
        assert tapped["from"] == "5511988887777"
        await expect(page.locator(".msg.out", has_text="Yes").locator(".quote")).to_have_text("Did that help?")

        await page.fill("#composer-input", "menu")
        await page.press("#composer-input", "Enter")
        await page.locator(".list-open", has_text="Options").click(timeout=EXPECT_TIMEOUT_MS)
        await expect(page.locator("#list-sheet")).to_be_visible()
        await page.screenshot(path=screenshot_dir(tmp_path) / "web-chat-list.png")
        await page.locator(".list-row", has_text="Track my order").click()
        picked = await bot.next_interactive_reply()
        assert picked["interactive"] == {
            "type": "list_reply",
            "list_reply": {"id": "track", "title": "Track my order", "description": "Where is my parcel?"},
        }
        await expect(page.locator("#list-sheet")).to_be_hidden()
        await bot.finish()
        # Closes the chat's event stream, so the sandbox stops without waiting for it.
        await page.close()

    assert errors == []
