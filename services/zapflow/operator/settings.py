"""Operator settings (ZAPFLOW_OPERATOR_*); the NATS URL and the database come from CoreSettings."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from zapflow.platform.settings import Port, ServiceSettings


class OperatorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ZAPFLOW_OPERATOR_")

    port: Port = 8010
    """/healthz, /readyz and /metrics (with ZAPFLOW_METRICS_TOKEN when set), as every zapflow process."""
    namespace: str | None = None
    """Watch BotTenants (and Secrets) in this namespace only; unset: in every namespace."""
    peering_name: str = "zapflow"
    """The kopf peering object the replicas share: one of them acts, the others wait."""
    priority: int | None = None
    """This replica's peering priority: the highest acts, the others stand by (unset: a random one)."""
    standalone: bool = False
    """Run without peering (one replica only, or tests)."""
    secret_retry_seconds: float = Field(default=30.0, gt=0)
    """How long a tenant waiting for a missing Secret waits before it checks again."""
    registry_retry_seconds: float = Field(default=10.0, gt=0)
    """How long a tenant whose registry write failed waits before it tries again."""
    secret_propagation_seconds: float = Field(default=90.0, ge=0)
    """How long after a Secret's data changes its tenants get a new registry revision: the kubelet
    refreshes mounted Secrets within about a minute, and a service reads each secret once per revision."""
    resync_seconds: float = Field(default=300.0, gt=0)
    """How often each tenant's registry entry and knowledge documents are compared with its resource and
    ConfigMaps and repaired."""
    configmap_retry_seconds: float = Field(default=30.0, gt=0)
    """How long a tenant waiting for a missing (or unlabelled) knowledge ConfigMap waits before it checks again."""
    knowledge_retry_seconds: float = Field(default=30.0, gt=0)
    """How long a tenant whose knowledge ConfigMaps no embedding service took waits before it tries again."""
    conversation_workload: str = "zapflow-conversation"
    """The shared conversation Deployment (and its KEDA ScaledObject), in the namespace of the BotTenants that ask
    for a dedicated workload: a tenant's own workload is a copy of it (the chart sets its name)."""
    cancel_campaigns: bool = True
    """Cancel a deleted tenant's active campaigns: needs the database (ZAPFLOW_DATABASE_URL), migrated."""
    scheduler_url: str = "http://127.0.0.1:8003"
    """The scheduler's admin API, which erases a deleted tenant whose spec.deletionPolicy is Erase (with
    ZAPFLOW_ADMIN_TOKEN)."""
    erasure_timeout_seconds: float = Field(default=900.0, gt=0)
    """How long the operator waits for the scheduler to erase a tenant: a busy tenant's rows and Redis's file
    rewrite take minutes. A timeout keeps the finalizer, and the erasure is asked for again."""
