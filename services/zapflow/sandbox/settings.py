"""Settings of the sandbox, the local stand-in for the WhatsApp Cloud API (ZAPFLOW_SANDBOX_*)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from zapflow.platform.settings import Port, ServiceSettings

# How far the automatic status lifecycle of an accepted message goes (the `statuses` field).
StatusLifecycle = Literal["off", "sent", "delivered", "read"]


class SandboxSettings(ServiceSettings):
    """Where the sandbox listens, where it delivers webhooks, and how it behaves.

    Logging, debug mode and where Secret keys are mounted come from `core`, as in every service.
    """

    model_config = SettingsConfigDict(env_prefix="ZAPFLOW_SANDBOX_")

    host: str = "127.0.0.1"
    """The address the sandbox binds: loopback by default, for a development tool."""
    port: Port = 8100
    """The emulated Graph API, the web chat and the test hooks."""
    webhook_url: str = Field(default="http://127.0.0.1:8000/webhook/whatsapp", pattern=r"^https?://")
    """The zapflow gateway's webhook: inbound messages and statuses are POSTed here, signed."""
    tenant_files: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    """BotTenant YAML files (or directories of them) from which the sandbox learns its numbers; from the
    environment, a comma-separated list."""

    statuses: StatusLifecycle = "read"
    """How far the status lifecycle of an accepted message goes: `read` plays sent, delivered and read;
    `delivered` models a customer who never opens the chat; `off` sends none (load tests that only count messages)."""
    status_sent_delay: float = Field(default=0.05, ge=0, le=60)
    """Seconds from a send's acceptance to its `sent` status."""
    status_delivered_delay: float = Field(default=0.15, ge=0, le=60)
    """Seconds from `sent` to `delivered`."""
    status_read_delay: float = Field(default=0.8, ge=0, le=600)
    """Seconds from `delivered` to `read`."""

    enforce_window: bool = True
    """Refuse free-form messages to a customer who has not written in 24 hours (131047), as Meta does. The
    benchmark turns it off: its pre-signed webhooks reach the gateway directly, so the sandbox never sees
    its customers write."""
    pair_burst: int = Field(default=10, ge=1, le=10_000)
    """Messages to one customer the Graph API lets through back to back before refusing with 131056 (pair rate
    limit hit), as Meta does; the allowance then refills one message every `pair_refill_seconds`."""
    pair_refill_seconds: float = Field(default=6.0, gt=0, le=3600)
    """Seconds for one more message to one customer to be allowed: Meta's sustained pair rate is about one message
    every 6 seconds."""

    webhook_timeout: float = Field(default=5.0, gt=0, le=120)
    """Seconds a webhook to the gateway may take."""
    webhook_attempts: int = Field(default=4, ge=1, le=20)
    """Attempts per status webhook (Meta retries for days; a few attempts are enough locally). Inbound
    messages are delivered once: the caller sees the gateway's answer and decides."""
    webhook_retry_delay: float = Field(default=0.25, ge=0, le=60)
    """Seconds before the first retry of a status webhook; the delay doubles for each following one."""
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """The largest request body accepted: Meta's webhooks can reach 3 MB and /sandbox/inbound forwards them."""
    max_recorded: int = Field(default=100_000, ge=1)
    """Sends and attempts kept in memory for /sandbox/messages and /sandbox/attempts."""

    @field_validator("tenant_files", mode="before")
    @classmethod
    def _split_comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
