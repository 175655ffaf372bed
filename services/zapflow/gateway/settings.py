"""Gateway settings (ZAPFLOW_GATEWAY_*); connection settings come from CoreSettings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from zapflow.platform.settings import Port, ServiceSettings
from zapflow.whatsapp.bounded import JsonLimits

# webhook: Meta's webhooks in; egress: the outbound commands out to the Graph API; all: both.
GatewayRole = Literal["all", "webhook", "egress"]


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ZAPFLOW_GATEWAY_")

    port: Port = 8000
    """The webhook, health and metrics. The deployment zapflow replaces listened on 8000; load balancers and
    Meta configs expect it."""
    role: GatewayRole = "all"
    """What this process does: `webhook` takes Meta's webhooks in, `egress` sends the outbound commands to the
    Graph API, `all` both (what `zapflow dev` runs). In a cluster they run apart, so that the webhook scales on
    CPU and egress on its consumer's lag."""
    max_body_bytes: int = 4 * 1024 * 1024
    """The largest webhook body accepted, then 413: Meta's payloads reach 3 MB, plus a little headroom."""
    max_json_depth: int = Field(default=JsonLimits.max_depth, ge=8, le=200)
    """Deepest nesting of arrays and objects in a webhook body (Meta's deepest documented payload has 8). A
    body past any of these limits is dead-lettered whole, unread."""
    max_json_items: int = Field(default=JsonLimits.max_items, ge=100)
    """Most elements of one array, or members of one object, in a webhook body."""
    max_json_string_chars: int = Field(default=JsonLimits.max_string_chars, ge=65_536)
    """Longest string in a webhook body (a customer's text has at most 65,536 characters)."""
    max_json_values: int = Field(default=JsonLimits.max_values, ge=1_000)
    """Most values in one webhook body, so that a small body cannot expand into millions of objects."""
    dead_letter_max_bytes: int = Field(default=256 * 1024, ge=1024, le=900 * 1024)
    """The most bytes of an unreadable webhook part kept in its dead letter (under NATS's 1 MB message
    limit); the reason says when a part was cut."""
    publish_timeout_s: float = 3.0
    """How long a webhook waits for JetStream's acknowledgement before answering 503. Meta times a webhook out
    after a few seconds; failing fast makes it retry."""
    graph_timeout_s: float = 10.0
    """The longest a Graph API call may take, connection included."""
    graph_connect_timeout_s: float = 5.0
    """The longest opening a connection to the Graph API may take."""
    graph_connections: int = 100
    """Connections to the Graph API one process keeps at most."""
    send_lease_s: float = 60.0
    """How long a Graph API call may stay unresolved before a redelivery treats it as abandoned (and
    dead-letters it as uncertain)."""
    sent_key_ttl_s: int = 8 * 86_400
    """Lifetime of outbound idempotency keys: longer than the outbound stream's 7-day retention."""
    egress_ack_wait_s: float = 60.0
    """Unacknowledged outbound commands of a dead gateway are redelivered after this long."""
    order_wait_s: float = 0.25
    """A command whose contact has an earlier one unsettled looks again after this long."""

    @property
    def json_limits(self) -> JsonLimits:
        return JsonLimits(
            max_depth=self.max_json_depth,
            max_items=self.max_json_items,
            max_string_chars=self.max_json_string_chars,
            max_values=self.max_json_values,
        )
