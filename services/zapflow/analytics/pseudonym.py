"""Per-tenant pseudonyms for phone numbers in analytics.

A phone number has so few digits that a plain hash of it is reversed by trying them all; a
keyed HMAC is not, without the key. Each tenant gets its own key, derived from the platform's
secret, so the same customer writing to two tenants has two unrelated pseudonyms and one
tenant's analytics cannot be joined with another's.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

# 128 bits: no collisions among any tenant's contacts, half the size of the full digest.
PSEUDONYM_HEX_CHARS = 32


@lru_cache(maxsize=4096)
def tenant_key(platform_secret: str, tenant: str) -> bytes:
    """The tenant's pseudonymisation key."""
    return hmac.new(platform_secret.encode(), f"zapflow/analytics/{tenant}".encode(), hashlib.sha256).digest()


def pseudonymise(key: bytes, wa_id: str) -> str:
    """The contact's pseudonym under a tenant key: stable, and meaningless without the key."""
    return hmac.new(key, wa_id.encode(), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX_CHARS]


def contact_pseudonym(platform_secret: str, tenant: str, wa_id: str) -> str:
    """The pseudonym of a tenant's contact in analytics."""
    return pseudonymise(tenant_key(platform_secret, tenant), wa_id)
