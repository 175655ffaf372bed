"""Settings of the sandbox, the local stand-in for the WhatsApp Cloud API (ZAPFLOW_SANDBOX_*)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# How far the automatic status lifecycle of an accepted message goes: "read" plays the whole
# sent -> delivered -> read sequence, "delivered" models a customer who never opens the chat,
# "off" sends no status webhook at all (load tests that only count messages).
StatusLifecycle = Literal["off", "sent", "delivered", "read"]


class SandboxSettings(BaseSettings):
    """Where the sandbox listens, where it delivers webhooks, and how it behaves."""

    model_config = SettingsConfigDict(env_prefix="ZAPFLOW_SANDBOX_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8100, ge=0, le=65535)
    # The zapflow gateway's webhook: inbound messages and statuses are POSTed here, signed.
    webhook_url: str = Field(default="http://127.0.0.1:8000/webhook/whatsapp", pattern=r"^https?://")
    # BotTenant YAML files (or directories of them) from which the sandbox learns its numbers.
    # From the environment: a comma-separated list.
    tenant_files: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    # Where Kubernetes Secret keys referenced by the tenants are mounted (as in CoreSettings).
    secrets_dir: Path = Path("/var/run/secrets/zapflow")

    statuses: StatusLifecycle = "read"
    # Each delay counts from the previous step: acceptance -> sent -> delivered -> read.
    status_sent_delay: float = Field(default=0.05, ge=0, le=60)
    status_delivered_delay: float = Field(default=0.15, ge=0, le=60)
    status_read_delay: float = Field(default=0.8, ge=0, le=600)

    webhook_timeout: float = Field(default=5.0, gt=0, le=120)
    # Status webhooks are retried (Meta retries for days; a few attempts are enough locally).
    # Inbound messages are delivered once: the caller sees the gateway's answer and decides.
    webhook_attempts: int = Field(default=4, ge=1, le=20)
    # Delay before the first retry; it doubles for each following one.
    webhook_retry_delay: float = Field(default=0.25, ge=0, le=60)
    # Meta's webhooks can reach 3 MB and /sandbox/inbound forwards them, hence 4 MiB.
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # Sends and attempts kept in memory for /sandbox/messages and /sandbox/attempts.
    max_recorded: int = Field(default=100_000, ge=1)

    log_level: str = "INFO"
    log_json: bool = True
    # Debug mode is the only place phone numbers may appear in logs.
    debug: bool = False

    @field_validator("tenant_files", mode="before")
    @classmethod
    def _split_comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
