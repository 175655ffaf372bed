"""Settings shared by every service; each service adds its own class on top."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values that ship in the repository; refused outside development so a forgotten
# variable cannot leave a production install open.
DEFAULT_SECRET = "changethis"  # noqa: S105 - it is the marker of an unset secret


class CoreSettings(BaseSettings):
    """Connection and runtime settings every zapflow process reads (ZAPFLOW_*)."""

    # Field docstrings are the descriptions docs/configuration.md is generated from.
    model_config = SettingsConfigDict(
        env_prefix="ZAPFLOW_", env_file=".env", extra="ignore", use_attribute_docstrings=True
    )

    environment: Literal["development", "production"] = "development"
    """`production` refuses inline tenant secrets, the default admin token and the default pseudonym secret."""
    nats_url: str = "nats://127.0.0.1:4222"
    """The NATS server, with JetStream: the bus and the tenant registry."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis or Valkey: debounce deadlines, locks, idempotency keys, rate limits, the history cache."""
    database_url: str = "sqlite+aiosqlite:///.zapflow/zapflow.db"
    """The relational store: a SQLite file embedded, `postgresql+asyncpg://user:password@host:5432/zapflow` in
    production."""
    analytics_path: Path = Path(".zapflow/analytics.duckdb")
    """The DuckDB analytics file (the scheduler writes it, `zapflow report` reads it)."""
    pseudonym_secret: SecretStr = SecretStr(DEFAULT_SECRET)
    """Derives each tenant's key for the pseudonyms of phone numbers in analytics. Changing it gives every
    contact a new pseudonym: keep it as long as the analytics file."""
    redis_max_connections: int = 64
    """Redis connections per process; callers beyond it wait for a free one."""
    stream_replicas: int = 1
    """JetStream replicas of the streams zapflow declares and of the tenant bucket: 1 embedded, 3 on a NATS
    cluster."""
    duplicate_window_s: float | None = None
    """How long JetStream drops a re-published message id, on every stream zapflow declares; unset, each
    stream's own window (2 minutes). The idempotency keys catch what comes later: tests shorten it to reach them."""
    tenant_bucket: str = "zf_tenants"
    """The NATS KV bucket that holds the tenant registry."""
    secrets_dir: Path = Path("/var/run/secrets/zapflow")
    """Where Kubernetes Secret keys are mounted: `<secrets_dir>/<secret name>/<key>`."""
    admin_token: SecretStr = SecretStr(DEFAULT_SECRET)
    """Bearer token of the admin API; refused at its default outside development."""
    metrics_token: SecretStr | None = None
    """When set, /metrics answers only to `Authorization: Bearer <token>` (for metrics exposed beyond the
    cluster network); Prometheus inside the cluster scrapes without it."""
    log_level: str = "INFO"
    """Level of zapflow's logs: `DEBUG`, `INFO`, `WARNING` or `ERROR`."""
    log_json: bool = True
    """JSON log lines on stderr; `false` renders them for a terminal."""
    debug: bool = False
    """Debug mode is the only place phone numbers and message bodies may appear in logs."""
    otlp_endpoint: str | None = None
    """OTLP/HTTP endpoint of the traces, e.g. `http://otel-collector:4318/v1/traces`; no export when unset."""

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


# A TCP port; 0 lets the kernel choose.
Port = Annotated[int, Field(ge=0, le=65535)]


class ServiceSettings(BaseSettings):
    """What every service's settings class adds to CoreSettings: where its HTTP server listens.

    Each service subclasses it in `<service>/settings.py` with its own env prefix
    (ZAPFLOW_<SERVICE>_) and default port; the connection settings stay in `core` (ZAPFLOW_*).
    """

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", use_attribute_docstrings=True)

    core: CoreSettings = Field(default_factory=CoreSettings)
    """The settings every process shares (ZAPFLOW_*)."""
    host: str = "0.0.0.0"
    """The address the service's HTTP server binds."""
    port: Port = 8000
    """The port of the service's HTTP server: its routes, /healthz, /readyz and /metrics."""
