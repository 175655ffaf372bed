"""Scheduler settings (ZAPFLOW_SCHEDULER_*); connection settings come from CoreSettings."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from zapflow.platform.settings import Port, ServiceSettings


class SchedulerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ZAPFLOW_SCHEDULER_")

    port: Port = 8003
    """The admin API, health and metrics."""
    interval_seconds: float = Field(default=60.0, gt=0)
    """Seconds between ticks; a session closes at most this long after its idle time ends."""
