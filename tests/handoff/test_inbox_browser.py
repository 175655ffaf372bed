"""The agent inbox in headless Chromium against the whole platform: an agent signs in, a customer asks for a
person, the agent claims, replies, writes a template once the 24-hour window closed, and resolves; an agent of
another tenant sees none of it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.async_api import Page, expect
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.handoff.conftest import (
    ASK,
    CANNED,
    CUSTOMER,
    NOTICE,
    TEMPLATE,
    close_window,
    recorded,
    sent_of_type,
    waiting_conversation,
)
from tests.support.browser import screenshot_dir
from tests.support.handoff import AGENT_PASSWORD, AgentApi
from tests.support.platform import Platform, eventually
from zapflow.tenants.model import BotTenant

pytestmark = pytest.mark.browser
# `page` comes after `platform` in every test: the browser closes its event stream before the services stop.
WAIT_MS = 15_000


async def sign_in(page: Page, platform: Platform, tenant: str, email: str) -> None:
    await page.goto(platform.handoff_url)
    await page.get_by_label("Tenant", exact=True).fill(tenant)
    await page.get_by_label("Email", exact=True).fill(email)
    await page.get_by_label("Password", exact=True).fill(AGENT_PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    # Live: the event stream is open, so whatever happens from now on reaches the page.
    await expect(page.locator("#connection")).to_have_text("live", timeout=WAIT_MS)


async def test_an_agent_claims_replies_sends_a_template_and_resolves(
    platform: Platform, agent: AgentApi, database: AsyncEngine, page: Page, tmp_path: Path
) -> None:
    await sign_in(page, platform, platform.tenant.name, agent.email)
    queue = page.locator("#queue-list")
    await expect(page.get_by_text("No conversations here.")).to_be_visible()

    # The customer writes after the page is open: the conversation appears in the queue by itself.
    await platform.say(CUSTOMER, ASK)
    row = queue.get_by_role("link", name=re.compile("Sandbox customer"))
    await expect(row).to_contain_text("asked for a person", timeout=WAIT_MS)
    await expect(row).to_contain_text("window open")
    await expect(page.locator("#figure-waiting")).to_have_text("1")
    await row.click()
    conversation_id = int(page.url.rsplit("/", 1)[-1])

    await expect(page.locator("#window-state")).to_have_text(re.compile(r"^window closes in 23 h 5\d min$"))
    await page.get_by_role("button", name="Claim").click()
    await expect(page.locator("#customer-status")).to_contain_text("With Ana (you)")
    await expect(row).to_be_hidden()  # no longer waiting
    await page.get_by_role("button", name="Mine").click()
    await expect(row).to_contain_text("with Ana (you)")

    # "/" + shortcut offers the canned response; Enter takes it, Enter again sends it.
    reply = page.get_by_label("Reply to the customer")
    await reply.press_sequentially("/bom")
    await expect(page.get_by_role("option", name=re.compile("bom-dia"))).to_be_visible()
    await reply.press("Enter")
    await expect(reply).to_have_value(CANNED["text"])
    await reply.press("Enter")
    await expect(reply).to_have_value("")
    await expect(page.locator(".entry.agent", has_text=CANNED["text"])).to_contain_text("Ana (you)")
    assert await platform.wait_for_texts(CUSTOMER, 2) == [NOTICE, CANNED["text"]]
    # The store's transcript (the recorder's) has the customer's words and the notice, marked as the system's.
    transcript = page.locator("#transcript")
    await expect(transcript.locator(".entry.customer", has_text=ASK)).to_be_visible(timeout=WAIT_MS)
    await expect(transcript.locator(".entry.system", has_text=NOTICE)).to_contain_text("system notice")

    # What the customer writes now appears in the open conversation without a reload.
    await platform.say(CUSTOMER, "meu pedido 4521 não chegou")
    await expect(transcript.locator(".entry.customer", has_text="meu pedido 4521 não chegou")).to_be_visible(
        timeout=WAIT_MS
    )
    await page.get_by_label("Private note (agents only)").fill("Pedido 4521: transportadora atrasada.")
    await page.get_by_role("button", name="Add note").click()
    note = transcript.locator(".entry.note", has_text="transportadora atrasada")
    await expect(note).to_contain_text("private note")
    await page.get_by_label("pedido", exact=True).check()
    await expect(row).to_contain_text("pedido")
    await page.screenshot(path=screenshot_dir(tmp_path) / "inbox-conversation.png")

    # A day later the window is closed: the text is refused with the API's reason, kept in the box, and the
    # template picker takes the reply box's place.
    await recorded(agent, conversation_id, "meu pedido 4521 não chegou")
    await close_window(database, platform.tenant.name)
    await reply.fill("Ainda está aí?")
    await reply.press("Enter")
    await expect(page.get_by_role("alert")).to_contain_text("24-hour window is closed")
    await expect(page.locator("#template-form")).to_be_visible()
    await expect(page.locator("#reply-form")).to_be_hidden()
    await expect(reply).to_have_value("Ainda está aí?")
    await expect(page.locator("#window-state")).to_have_text("window closed")
    await page.get_by_label("Parameter {{1}}").fill("Maria")
    await page.get_by_label("Parameter {{2}}").fill("seu pedido")
    shown = "Olá Maria, podemos continuar sobre seu pedido?"
    await expect(page.locator("#template-preview")).to_have_text(shown)
    await page.screenshot(path=screenshot_dir(tmp_path) / "inbox-window-closed.png")
    await page.get_by_role("button", name="Send template").click()
    await expect(transcript.locator(".entry.agent", has_text=shown)).to_be_visible(timeout=WAIT_MS)
    [template] = await eventually(lambda: sent_of_type(platform, "template"), what="the template in the sandbox")
    assert template["template"]["name"] == TEMPLATE["name"]

    await page.get_by_role("button", name="Resolve…").click()
    await expect(page.get_by_label("Closing message (optional)")).to_be_disabled()
    await page.get_by_role("dialog").get_by_role("button", name="Resolve").click()
    await expect(page.locator("#customer-status")).to_contain_text("Resolved by Ana (you)")
    await expect(page.locator("#reply-form")).to_be_hidden()
    await expect(page.locator("#template-form")).to_be_hidden()
    await expect(queue.get_by_role("link")).to_have_count(0)

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("Password", exact=True)).to_be_visible()


async def test_another_tenants_agent_sees_an_empty_queue_and_not_found(
    platform: Platform, agent: AgentApi, stranger: AgentApi, other_tenant: BotTenant, page: Page
) -> None:
    await platform.say(CUSTOMER, ASK)
    conversation = await waiting_conversation(agent)

    await sign_in(page, platform, other_tenant.name, stranger.email)
    await expect(page.get_by_text("No conversations here.")).to_be_visible()
    await page.get_by_role("button", name="All open").click()
    await expect(page.get_by_text("No conversations here.")).to_be_visible()
    await expect(page.locator("#queue-list").get_by_role("link")).to_have_count(0)

    path = f"/api/v1/conversations/{conversation['id']}"
    async with page.expect_response(lambda answer: answer.url.endswith(path)) as read:
        await page.goto(f"{platform.handoff_url}/inbox/#/c/{conversation['id']}")
    assert (await read.value).status == 404
    await expect(page.get_by_role("heading", name="Conversation not found")).to_be_visible()
    await expect(page.locator("#conversation-view")).to_be_hidden()
