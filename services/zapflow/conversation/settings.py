"""Conversation service settings (ZAPFLOW_CONVERSATION_*)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from zapflow.platform.settings import CoreSettings


class ConversationSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ZAPFLOW_CONVERSATION_", env_file=".env", extra="ignore")

    core: CoreSettings = Field(default_factory=CoreSettings)
    # Read history from the relational store (ZAPFLOW_DATABASE_URL) when Redis has none for a
    # contact, e.g. after a Redis restart.
    history_from_store: bool = True
    # Health and metrics only: this service has no public HTTP surface.
    host: str = "0.0.0.0"
    port: int = 8001
    # A wamid is answered once, for 24 h: JetStream's dedup window is 2 minutes, and a copy of a
    # message Meta re-sends later than that is dropped here (see the README's engine section).
    message_key_ttl_s: int = 86_400
    # A turn is answered once: a re-run of an in-flight turn within this time skips the responder.
    turn_key_ttl_s: int = 3_600
    # Held messages of a dead replica are redelivered after this long (live ones heartbeat).
    ack_wait_s: float = 30.0
    # How often each replica looks for contacts whose debounce deadline has passed.
    closer_interval_s: float = 0.01
    closer_batch: int = 200
    # Turns one replica answers at once; more wait in the due set (measured in bench/README.md).
    max_running_turns: int = 32
    # A contact's turn lock; extended while the turn runs, so it only expires when its process died.
    turn_lease_s: float = 15.0
    # When a due contact's previous turn is still running, look again after this long.
    lock_retry_ms: int = 100
    # The most messages one turn takes; a longer burst continues in the next turn.
    max_turn_messages: int = 50
    # LLM context: the relational store holds the history; Redis keeps a contact's last turns as a
    # short write-through cache, refreshed by every turn, so a live conversation never waits for
    # the recorder and an idle one (or one Redis lost) is read back from SQL.
    history_max_turns: int = 50
    history_ttl_s: int = 3_600
