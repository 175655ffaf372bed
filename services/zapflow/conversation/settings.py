"""Conversation service settings (ZAPFLOW_CONVERSATION_*)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from zapflow.platform.settings import Port, ServiceSettings


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
