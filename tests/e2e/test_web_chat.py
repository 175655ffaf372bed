"""The web chat in headless Chromium against the real platform: a person writes, the bot answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from tests.support.browser import screenshot_dir
from tests.support.platform import running_platform
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.registry import TenantRegistry

pytestmark = pytest.mark.browser
WAIT_MS = 15_000


async def test_send_a_message_and_see_the_bots_reply(
    page: Page, core: CoreSettings, registry: TenantRegistry, tmp_path: Path
) -> None:
    async with running_platform(core, registry) as platform:
        await page.goto(str(platform.sandbox.base_url))
        await page.select_option("#number-select", platform.number)
        await page.fill("#customer-phone", "+55 11 97777-1234")
        await page.fill("#customer-name", "Ana")
        await page.click("#open-chat")
        await expect(page.locator("#send-button")).to_be_enabled(timeout=WAIT_MS)

        await page.fill("#composer-input", "what is the price?")
        await page.press("#composer-input", "Enter")

        await expect(page.locator(".msg.in", has_text="Welcome!")).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator(".msg.in", has_text="It costs $10.")).to_be_visible(timeout=WAIT_MS)
        asked = page.locator(".msg.out", has_text="what is the price?")
        # The engine marked the burst read when the turn started: blue double tick.
        await expect(asked.locator(".tick")).to_have_attribute("data-state", "read", timeout=WAIT_MS)
        await page.screenshot(path=screenshot_dir(tmp_path) / "web-chat-platform.png")
        await page.close()
