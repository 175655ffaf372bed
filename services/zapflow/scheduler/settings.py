"""Scheduler settings (ZAPFLOW_SCHEDULER_*); connection settings come from CoreSettings."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from zapflow.platform.settings import CoreSettings


class SchedulerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ZAPFLOW_SCHEDULER_", env_file=".env", extra="ignore")

    core: CoreSettings = Field(default_factory=CoreSettings)
    # Admin API, health and metrics.
    host: str = "0.0.0.0"
    port: int = 8003
    # Seconds between ticks; a session closes at most this long after its idle time ends.
    interval_seconds: float = Field(default=60.0, gt=0)
