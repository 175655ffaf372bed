"""What the benchmark sends: its tenants and their pre-signed webhooks."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bench import loadgen

DEBOUNCE = {"windowMs": 300, "maxWaitMs": 1000}
# A contact writes again only this long after its previous message: far beyond the debounce
# window and its maximum wait, so every message is its own turn and turns map 1:1 to messages.
CONTACT_GAP_S = 4.0


def tenant_documents(count: int, sandbox_url: str) -> list[dict[str, Any]]:
    """`count` tenants, each with its own number, secrets and a rules bot that always answers once."""
    documents = []
    for i in range(count):
        name = f"bench-{i}"
        documents.append(
            {
                "apiVersion": "zapflow.io/v1alpha1",
                "kind": "BotTenant",
                "metadata": {"name": name},
                "spec": {
                    "whatsapp": {
                        "phoneNumberId": f"{900_000_000_000_001 + i}",
                        "graphApiUrl": sandbox_url,
                        "apiVersion": "v21.0",
                        "appSecret": {"value": f"app-secret-{name}"},
                        "accessToken": {"value": f"token-{name}"},
                        "verifyToken": {"value": f"verify-{name}"},
                    },
                    "rateLimits": {"messagesPerSecond": 1000},
                    "debounce": DEBOUNCE,
                    "bot": {
                        "responder": "rules",
                        # No greeting: it would be a second send for a first turn.
                        "rules": [{"name": "prices", "match": {"keywords": ["price"]}, "reply": {"text": "From $10."}}],
                        "fallback": {"text": "ok"},
                        # Every reply quotes its turn's last message, so each send maps to its turn.
                        "quoteAfterMessages": 1,
                        "typingIndicator": False,
                    },
                },
            }
        )
    return documents


@dataclass(frozen=True)
class SignedRequests:
    """Whole HTTP requests, ready to write, and the wamid each one carries."""

    requests: list[bytes]
    wamids: list[str]


@dataclass(frozen=True)
class Workload:
    """The tenants applied to the stack, and webhooks for them; wamids carry `run_id`."""

    documents: list[dict[str, Any]]
    gateway_port: int
    run_id: str

    def webhooks(self, count: int, contacts: int, prefix: str) -> SignedRequests:
        """Pre-signed webhooks: request i from contact i % contacts, of tenant contact % tenants."""
        epoch = int(time.time())
        requests, wamids = [], []
        for i in range(count):
            c = i % contacts
            tenant = self.documents[c % len(self.documents)]["spec"]["whatsapp"]
            contact = f"{prefix}{c:08d}"
            wamid = f"wamid.BENCH{self.run_id}{prefix}{i:08d}"
            text = "what is the price?" if i % 3 == 0 else f"hello {i}"
            body = loadgen.webhook_body(tenant["phoneNumberId"], contact, wamid, text, epoch)
            secret = tenant["appSecret"]["value"]
            requests.append(loadgen.http_post("127.0.0.1", self.gateway_port, "/webhook/whatsapp", body, secret))
            wamids.append(wamid)
        return SignedRequests(requests, wamids)
