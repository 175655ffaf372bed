"""Conversation service settings (ZAPFLOW_CONVERSATION_*)."""

from __future__ import annotations

import re

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from zapflow.platform.settings import Port, ServiceSettings
from zapflow.tenants.model import TENANT_NAME_PATTERN


class ConversationSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ZAPFLOW_CONVERSATION_")

    history_from_store: bool = True
    """Read history from the relational store (ZAPFLOW_DATABASE_URL) when Redis has none for a contact, e.g.
    after a Redis restart."""
    port: Port = 8001
    """Health and metrics only: this service has no public HTTP surface."""
    message_key_ttl_s: int = 86_400
    """How long a wamid stays answered. JetStream's dedup window is 2 minutes; a copy of a message that Meta
    re-sends later than that is dropped by this key (docs/architecture.md)."""
    turn_key_ttl_s: int = 3_600
    """How long a turn stays answered: a re-run of an in-flight turn within this time skips the responder."""
    ack_wait_s: float = 30.0
    """Held messages of a dead replica are redelivered after this long (live ones heartbeat)."""
    closer_interval_s: float = 0.01
    """How often each replica looks for contacts whose debounce deadline has passed."""
    closer_batch: int = 200
    """The most due contacts one look takes."""
    max_running_turns: int = 32
    """Turns one replica answers at once; more wait in the due set (measured in docs/benchmark.md)."""
    turn_lease_s: float = 15.0
    """A contact's turn lock; extended while the turn runs, so it only expires when its process died."""
    lock_retry_ms: int = 100
    """When a due contact's previous turn is still running, look again after this long."""
    max_turn_messages: int = 50
    """The most messages one turn takes; a longer burst continues in the next turn."""
    history_max_turns: int = 50
    """Turns of a contact's history kept in Redis for a language model's context. The relational store holds
    the history; Redis keeps the last turns as a write-through cache, refreshed by every turn, so a live
    conversation never waits for the recorder and an idle one (or one Redis lost) is read back from SQL."""
    knowledge_timeout_s: float = Field(default=2.0, gt=0, le=60)
    """How long a turn waits for a knowledge search (the faq responder, grounding) before it answers without one."""
    history_ttl_s: int = 3_600
    """How long the Redis history cache outlives a contact's last turn."""
    dedicated_tenant: str | None = None
    """The tenant this replica answers alone (the operator sets it on a tenant's dedicated workload): it consumes
    `conversation-<tenant>` and runs the turns of that tenant's due set only. Unset: a shared replica, which runs
    the turns of every tenant not served by a workload of its own."""
    dedicated_sweep_interval_s: float = Field(default=30.0, gt=0)
    """How often a shared replica moves the pending turns of tenants no longer dedicated (left by their own
    replicas) into the shared due set; a registry change moves them at once."""

    @field_validator("dedicated_tenant")
    @classmethod
    def _dns_label(cls, value: str | None) -> str | None:
        # It becomes a NATS subject token, a consumer's name and part of a Redis key.
        if value is not None and not re.fullmatch(TENANT_NAME_PATTERN, value):
            raise ValueError(f"{value!r} is not a DNS label (lower-case letters, digits and '-')")
        return value
