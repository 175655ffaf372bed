"""Gateway settings (ZAPFLOW_GATEWAY_*); connection settings come from CoreSettings."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from zapflow.platform.settings import CoreSettings


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ZAPFLOW_GATEWAY_", env_file=".env", extra="ignore")

    core: CoreSettings = Field(default_factory=CoreSettings)
    host: str = "0.0.0.0"
    # The deployment zapflow replaces listened on 8000; load balancers and Meta configs expect it.
    port: int = 8000
    # Meta's payloads reach 3 MB; a little headroom, then 413.
    max_body_bytes: int = 4 * 1024 * 1024
    # Meta times a webhook out after a few seconds; fail fast with 503 so it retries.
    publish_timeout_s: float = 3.0
    graph_timeout_s: float = 10.0
    graph_connect_timeout_s: float = 5.0
    graph_connections: int = 100
    # How long a Graph API call may stay unresolved before a redelivery treats it as abandoned.
    send_lease_s: float = 60.0
    # Outbound idempotency keys outlive the outbound stream's 7-day retention.
    sent_key_ttl_s: int = 8 * 86_400
    # Unacknowledged outbound commands of a dead gateway are redelivered after this long.
    egress_ack_wait_s: float = 60.0
    # A command whose contact has an earlier one unsettled looks again after this long.
    order_wait_s: float = 0.25
