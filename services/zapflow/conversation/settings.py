"""Conversation service settings (ZAPFLOW_CONVERSATION_*)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from zapflow.core.settings import CoreSettings


class ConversationSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ZAPFLOW_CONVERSATION_", env_file=".env", extra="ignore")

    core: CoreSettings = Field(default_factory=CoreSettings)
    # Health and metrics only: this service has no public HTTP surface.
    host: str = "0.0.0.0"
    port: int = 8001
    # A wamid is answered once: Meta retries for 7 days, longer than JetStream's dedup window.
    message_key_ttl_s: int = 8 * 86_400
    # Mark each message read and show the typing indicator while the bot answers.
    typing_indicator: bool = True
