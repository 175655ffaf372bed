"""Handoff service settings (ZAPFLOW_HANDOFF_*); connection settings come from CoreSettings."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from zapflow.platform.settings import Port, ServiceSettings


class HandoffSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ZAPFLOW_HANDOFF_")

    port: Port = 8005
    """The agent inbox (web pages and its JSON API under /api/v1/), health and metrics."""
    public_url: str = Field(default="http://127.0.0.1:8005", pattern=r"^https?://")
    """Where agents reach the inbox: the links in notifications point there."""
    session_idle_s: int = Field(default=8 * 3600, ge=60, le=30 * 86_400)
    """An inbox session ends after this long without a request (the agent signs in again)."""
    secure_cookies: bool | None = None
    """Send the session cookie over HTTPS only; unset: on outside development."""
    presence_window_s: float = Field(default=60.0, ge=5, le=3600)
    """An agent counts as online this long after their inbox last reached the service (it does every 20 s)."""
    sweep_interval_s: float = Field(default=10.0, gt=0, le=3600)
    """How often each replica assigns waiting conversations, times out idle ones and refreshes the queue gauges."""
    max_transcript_messages: int = Field(default=500, ge=10, le=10_000)
    """The most recent messages of a conversation the inbox shows."""

    @property
    def cookies_secure(self) -> bool:
        return self.secure_cookies if self.secure_cookies is not None else not self.core.is_development
