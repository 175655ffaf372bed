"""X-Hub-Signature-256: HMAC-SHA256 of the raw webhook body, keyed with the Meta app secret."""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Hub-Signature-256"
_PREFIX = "sha256="


def sign(body: bytes, app_secret: str) -> str:
    """The header value Meta would send for this body."""
    return _PREFIX + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def signature_matches(body: bytes, header: str | None, app_secret: str) -> bool:
    """Constant-time comparison of the header against the expected signature."""
    if not header or not header.startswith(_PREFIX):
        return False
    expected = sign(body, app_secret)
    return hmac.compare_digest(expected.encode(), header.strip().lower().encode())
