"""Settings shared by every service; each service adds its own class on top."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values that ship in the repository; refused outside development so a forgotten
# variable cannot leave a production install open.
DEFAULT_SECRET = "changethis"  # noqa: S105 - it is the marker of an unset secret


class CoreSettings(BaseSettings):
    """Connection and runtime settings every zapflow process reads (ZAPFLOW_*)."""

    model_config = SettingsConfigDict(env_prefix="ZAPFLOW_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = "development"
    nats_url: str = "nats://127.0.0.1:4222"
    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "sqlite+aiosqlite:///.zapflow/zapflow.db"  # production: postgresql+asyncpg://...
    # The DuckDB analytics file (the scheduler writes it, `zapflow report` reads it).
    analytics_path: Path = Path(".zapflow/analytics.duckdb")
    # Derives each tenant's key for the pseudonyms of phone numbers in analytics. Changing it
    # gives every contact a new pseudonym: keep it as long as the analytics file.
    pseudonym_secret: SecretStr = SecretStr(DEFAULT_SECRET)
    # Connections per process; callers beyond it wait for a free one.
    redis_max_connections: int = 64
    # JetStream replicas for the streams zapflow declares: 1 embedded, 3 on a NATS cluster.
    stream_replicas: int = 1
    tenant_bucket: str = "zf_tenants"
    # Where Kubernetes Secret keys are mounted: <secrets_dir>/<secret name>/<key>.
    secrets_dir: Path = Path("/var/run/secrets/zapflow")
    admin_token: SecretStr = SecretStr(DEFAULT_SECRET)
    # When set, /metrics answers only to "Authorization: Bearer <token>" (for metrics exposed
    # beyond the cluster network); Prometheus inside the cluster scrapes without it.
    metrics_token: SecretStr | None = None
    log_level: str = "INFO"
    log_json: bool = True
    # Debug mode is the only place phone numbers and message bodies may appear in logs.
    debug: bool = False
    otlp_endpoint: str | None = None

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Self:
        if self.environment != "development" and self.admin_token.get_secret_value() == DEFAULT_SECRET:
            raise ValueError("ZAPFLOW_ADMIN_TOKEN is still the default value; set a real secret outside development")
        if self.environment != "development" and self.pseudonym_secret.get_secret_value() == DEFAULT_SECRET:
            raise ValueError(
                "ZAPFLOW_PSEUDONYM_SECRET is still the default value; set a real secret outside development"
            )
        return self

    @property
    def is_development(self) -> bool:
        return self.environment == "development"
