"""Signed webhooks to the gateway: inbound messages once, statuses in the background with retries."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import httpx

from zapflow.platform.logging import get_logger, redact_phone
from zapflow.sandbox.meta import StatusName, encode_webhook, status_webhook
from zapflow.sandbox.numbers import SandboxNumber
from zapflow.sandbox.recording import SentMessage
from zapflow.sandbox.settings import SandboxSettings
from zapflow.whatsapp.signature import SIGNATURE_HEADER, sign

log = get_logger(__name__)

# Enough of the gateway's answer to explain a failure, never a whole page.
_ANSWER_EXCERPT_CHARS = 2000


@dataclass(frozen=True)
class GatewayAnswer:
    status: int
    body: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class GatewayUnreachable(Exception):
    """No HTTP answer from the webhook URL: refused, reset, timed out."""


class WebhookDelivery:
    """POSTs Meta-shaped notifications to the webhook URL, signed with the number's app secret."""

    def __init__(self, client: httpx.AsyncClient, url: str, attempts: int, retry_delay: float) -> None:
        self._client = client
        self._url = url
        self._attempts = attempts
        self._retry_delay = retry_delay

    async def deliver_once(self, number: SandboxNumber, payload: dict[str, Any]) -> GatewayAnswer:
        body = encode_webhook(payload)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(body, number.app_secret),
            "User-Agent": "facebookexternalua",
        }
        try:
            response = await self._client.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as error:
            reason = str(error) or type(error).__name__
            raise GatewayUnreachable(f"gateway unreachable at {self._url}: {reason}") from error
        return GatewayAnswer(response.status_code, response.text[:_ANSWER_EXCERPT_CHARS])

    async def deliver_with_retries(self, number: SandboxNumber, payload: dict[str, Any]) -> bool:
        """Deliver until a 2xx answer or the attempts run out (as Meta retries, but briefly)."""
        for attempt in range(1, self._attempts + 1):
            try:
                answer = await self.deliver_once(number, payload)
                if answer.ok:
                    return True
                problem = f"HTTP {answer.status}"
            except GatewayUnreachable as error:
                problem = str(error)
            log.warning("webhook delivery failed", tenant=number.tenant, attempt=attempt, problem=problem)
            if attempt < self._attempts:
                await asyncio.sleep(self._retry_delay * 2 ** (attempt - 1))
        log.error("webhook dropped after retries", tenant=number.tenant, attempts=self._attempts)
        return False


class BackgroundTasks:
    """Tasks that outlive the request that started them; cancelled when the app stops."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("background task failed", error=repr(error))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class StatusLifecycle:
    """Plays sent -> delivered -> read for each accepted message, in order, in the background."""

    def __init__(self, delivery: WebhookDelivery, tasks: BackgroundTasks, settings: SandboxSettings) -> None:
        self._delivery = delivery
        self._tasks = tasks
        self._debug = settings.core.debug
        every_step: list[tuple[StatusName, float]] = [
            ("sent", settings.status_sent_delay),
            ("delivered", settings.status_delivered_delay),
            ("read", settings.status_read_delay),
        ]
        last = ["off", "sent", "delivered", "read"].index(settings.statuses)
        self._steps = every_step[:last]

    def start(self, number: SandboxNumber, message: SentMessage, biz_opaque_callback_data: str | None) -> None:
        if self._steps:
            self._tasks.spawn(self._play(number, message, biz_opaque_callback_data))

    async def _play(self, number: SandboxNumber, message: SentMessage, biz_opaque_callback_data: str | None) -> None:
        for status, delay in self._steps:
            await asyncio.sleep(delay)
            payload = status_webhook(
                number,
                wamid=message.wamid,
                recipient=message.to,
                status=status,
                is_template=message.type == "template",
                accepted_at=message.timestamp,
                biz_opaque_callback_data=biz_opaque_callback_data,
            )
            # A status Meta could not deliver is still followed by the next: the gateway must
            # cope with gaps, as it does in production.
            delivered = await self._delivery.deliver_with_retries(number, payload)
            log.debug(
                "status webhook",
                status=status,
                delivered=delivered,
                recipient=redact_phone(message.to, self._debug),
            )
