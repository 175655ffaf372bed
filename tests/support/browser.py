"""Headless Chromium from Debian, driven with Playwright's Python API (never a downloaded browser)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Where to keep the screenshots for a person to look at; pytest's tmp_path when unset.
SCREENSHOT_DIR_VARIABLE = "ZAPFLOW_SCREENSHOT_DIR"


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's Chromium with `apt-get install -y chromium`")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield await browser.new_page(viewport={"width": 1280, "height": 800})
        finally:
            await browser.close()


def screenshot_dir(tmp_path: Path) -> Path:
    chosen = Path(os.environ.get(SCREENSHOT_DIR_VARIABLE) or tmp_path)
    chosen.mkdir(parents=True, exist_ok=True)
    return chosen
