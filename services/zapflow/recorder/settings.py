"""Recorder settings (ZAPFLOW_RECORDER_*); connection settings come from CoreSettings."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from zapflow.platform.settings import Port, ServiceSettings


class RecorderSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ZAPFLOW_RECORDER_")

    port: Port = 8002
    """Health and metrics only."""
    batch_max_events: int = Field(default=200, ge=1)
    """The most events written in one transaction."""
    batch_linger_ms: float = Field(default=5.0, ge=0)
    """The longest the oldest waiting event waits for others before its batch is written (under load they
    gather anyway while the previous batch is being written)."""
