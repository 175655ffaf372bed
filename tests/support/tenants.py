"""BotTenant documents for tests, with unique names and numbers per test."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from zapflow.tenants.files import parse_tenant
from zapflow.tenants.model import BotTenant

_numbers = itertools.count(100_000_000_000_100)


# Short enough that a test does not wait long for each turn, long enough to merge a burst.
TEST_DEBOUNCE = {"windowMs": 300, "maxWaitMs": 2000}


def tenant_document(
    graph_api_url: str = "http://127.0.0.1:9",
    messages_per_second: float = 80,
    debounce: dict[str, int] | None = None,
    spec: dict[str, Any] | None = None,
    **bot: Any,
) -> dict[str, Any]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    document = {
        "apiVersion": "zapflow.io/v1alpha1",
        "kind": "BotTenant",
        "metadata": {"name": name},
        "spec": {
            "whatsapp": {
                "phoneNumberId": str(next(_numbers)),
                "graphApiUrl": graph_api_url,
                "apiVersion": "v21.0",
                "appSecret": {"value": f"secret-{name}"},
                "accessToken": {"value": f"token-{name}"},
                "verifyToken": {"value": f"verify-{name}"},
            },
            "rateLimits": {"messagesPerSecond": messages_per_second},
            "debounce": debounce or TEST_DEBOUNCE,
            "bot": bot
            or {
                "greeting": {"text": "Welcome!"},
                "rules": [
                    {"name": "prices", "match": {"keywords": ["price"]}, "reply": {"text": "It costs $10."}},
                    {
                        "name": "confirm",
                        "match": {"buttonIds": ["yes"]},
                        "reply": {"text": "Confirmed.", "buttons": [{"id": "again", "title": "Again"}]},
                    },
                ],
                "fallback": {"text": "Sorry?"},
            },
        },
    }
    document["spec"].update(spec or {})
    return document


def make_tenant(
    graph_api_url: str = "http://127.0.0.1:9",
    messages_per_second: float = 80,
    debounce: dict[str, int] | None = None,
    spec: dict[str, Any] | None = None,
    **bot: Any,
) -> BotTenant:
    return parse_tenant(tenant_document(graph_api_url, messages_per_second, debounce, spec, **bot))


def secret(tenant: BotTenant, which: str = "app_secret") -> str:
    value = getattr(tenant.spec.whatsapp, which).value
    assert value is not None
    return str(value)
