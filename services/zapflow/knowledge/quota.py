"""The per-tenant chunk quota, one rule for the service (before embedding, and in the commit's
transaction) and the CLI (before the first request). Apart from store.py so the CLI does not
import SQLAlchemy to check it."""

from __future__ import annotations


class QuotaExceeded(Exception):
    """The tenant would hold more chunks than its quota; the message gives both numbers."""


def require_quota(tenant: str, chunks: int, quota: int) -> None:
    """Raise QuotaExceeded when the tenant would hold more than `quota` chunks."""
    if chunks > quota:
        raise QuotaExceeded(
            f"tenant {tenant} would hold {chunks:,} chunks; its quota is {quota:,} "
            "(ZAPFLOW_EMBEDDING_MAX_CHUNKS_PER_TENANT)"
        )
