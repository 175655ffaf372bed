"""Recorder settings (ZAPFLOW_RECORDER_*); connection settings come from CoreSettings."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from zapflow.platform.settings import CoreSettings


class RecorderSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ZAPFLOW_RECORDER_", env_file=".env", extra="ignore")

    core: CoreSettings = Field(default_factory=CoreSettings)
    # Health and metrics only.
    host: str = "0.0.0.0"
    port: int = 8002
    # At most this many events per transaction; the oldest waiting event waits at most the linger
    # for others (under load they gather anyway while the previous batch is being written).
    batch_max_events: int = Field(default=200, ge=1)
    batch_linger_ms: float = Field(default=5.0, ge=0)
