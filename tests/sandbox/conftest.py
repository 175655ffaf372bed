"""Running sandboxes for the tests, and a receiver that plays the gateway's webhook."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.sandbox.helpers import StartSandbox, WebhookReceiver, customer_writes, running_sandbox
from tests.support.http import serve


@pytest.fixture
async def sandbox() -> AsyncIterator[httpx.AsyncClient]:
    """A fresh sandbox of its own, delivering no webhooks."""
    async with running_sandbox() as client:
        yield client


@pytest.fixture(scope="module")
async def shared_sandbox() -> AsyncIterator[httpx.AsyncClient]:
    """One sandbox for a module's checks of shapes (refusals, validation, accepted payloads).

    The customer has written, and the pair rate allows every send of the module: WhatsApp's rules
    have their own tests (test_rules.py).
    """
    async with running_sandbox(pair_burst=10_000) as client:
        await customer_writes(client)
        yield client


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    found = WebhookReceiver()
    async with serve(found.app) as url:
        found.url = f"{url}/webhook/whatsapp"
        yield found


@pytest.fixture
def start_sandbox(receiver: WebhookReceiver) -> StartSandbox:
    """Starts a sandbox that delivers to the receiver; settings can be overridden."""

    def start(**overrides: Any) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
        return running_sandbox(webhook_url=receiver.url, **overrides)

    return start
