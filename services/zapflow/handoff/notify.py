"""Notifications to the tenants' agents: an outgoing webhook per tenant, signed, retried, then dead-lettered.

What is sent: one POST per `AgentNotification` (zf.evt.notify.<tenant>.<contact>) to the tenant's
`spec.handoff.notify.url`, for the events in `notify.events`. The body is Slack-compatible JSON
(a Slack incoming webhook shows `text` and ignores the rest); a generic receiver reads the
`zapflow` object:

    {"text": "New conversation waiting (customer_asked): Ana +55…4444 https://inbox.example/inbox/#/c/42",
     "zapflow": {"id": "<notification id>", "tenant": "acme", "event": "requested",
                 "handoff_id": 42, "agent": null, "at": "2025-01-31T12:00:00+00:00"}}

The customer's number is not in the `zapflow` object; `text` holds it masked at most.

How it is signed: with `notify.secret` set, `X-Zapflow-Signature-256: sha256=<hex HMAC-SHA256 of
the raw body keyed with the secret>` (the scheme GitHub and Meta use). A receiver verifies the
bytes it received, before parsing them:

    import hashlib, hmac

    def verified(secret: str, body: bytes, header: str) -> bool:
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, header)

Retries: anything but a 2xx answer (a 4xx too: a misconfigured receiver may be fixed), a
transport error or no answer within 10 s is retried after `catalogue.HANDOFF_NOTIFY.backoff_s`
(2 s, 10 s, 30 s, 1 min, 5 min, 10 min, 20 min), `max_attempts` (8) times in all; then the
notification is dead-lettered (ZF_DLQ, `zapflow dead-letters list`) and counted, never retried
forever. Delivery is at least once: a receiver that answered too late is sent the notification
again, with the same `X-Zapflow-Delivery` header (the notification id), on which it should
deduplicate.

Neither the webhook URL (a Slack one holds its credential) nor the secret nor the body is logged.
"""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

import httpx
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg

from zapflow.platform import bus, catalogue, metrics
from zapflow.platform.logging import get_logger
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.registry import TenantRegistry
from zapflow.tenants.secrets import SecretUnavailable
from zapflow.v1 import handoff_pb2
from zapflow.whatsapp import signature

log = get_logger(__name__)

SIGNATURE_HEADER = "X-Zapflow-Signature-256"
# The notification id: the same on every attempt, so that a receiver can drop a repeat.
DELIVERY_HEADER = "X-Zapflow-Delivery"
TIMEOUT_S = 10.0


def notification_body(notification: handoff_pb2.AgentNotification) -> dict[str, Any]:
    """The Slack-compatible JSON of a notification, without the customer's number."""
    return {
        "text": notification.text,
        "zapflow": {
            "id": notification.notification_id,
            "tenant": notification.tenant,
            "event": notification.event,
            "handoff_id": notification.handoff_id,
            "agent": notification.agent or None,
            "at": notification.at.ToDatetime(tzinfo=UTC).isoformat() if notification.HasField("at") else None,
        },
    }


def sign(secret: str, body: bytes) -> str:
    """The X-Zapflow-Signature-256 value: sha256=<hex HMAC-SHA256 of the body>, Meta's own scheme."""
    return signature.sign(body, secret)


class Notifier:
    """The HANDOFF_NOTIFY consumer's handler: one POST per delivery attempt."""

    def __init__(self, registry: TenantRegistry, http: httpx.AsyncClient, core: CoreSettings) -> None:
        self._registry = registry
        self._http = http
        self._core = core

    async def deliver(self, notification: handoff_pb2.AgentNotification, msg: Msg) -> None:
        """POST the notification; return to acknowledge it, raise RetryLater to be tried again after the backoff."""
        tenant = self._registry.by_name(notification.tenant)
        if tenant is None:
            raise bus.RetryLater(f"tenant {notification.tenant} is not in the registry (yet)")
        notify = tenant.spec.handoff.notify
        # The tenant's spec may have changed since the notification was published.
        if notify is None or notification.event not in notify.events:
            log.debug("notification not wanted", tenant=tenant.name, notification_event=notification.event)
            return
        body = json.dumps(notification_body(notification), separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", DELIVERY_HEADER: notification.notification_id}
        if notify.secret is not None:
            try:
                secret = tenant.secrets.resolve(notify.secret, self._core.secrets_dir, self._core.is_development)
            except SecretUnavailable as error:
                raise bus.RetryLater(f"notification secret unavailable: {error}") from error
            headers[SIGNATURE_HEADER] = sign(secret, body)
        try:
            response = await self._http.post(notify.url, content=body, headers=headers, timeout=TIMEOUT_S)
        except httpx.HTTPError as error:  # refused, reset, timed out: the receiver may be back later
            self._failed(notification, msg, error=type(error).__name__)
            raise bus.RetryLater(f"notification webhook unreachable: {type(error).__name__}") from error
        if not response.is_success:
            self._failed(notification, msg, status=response.status_code)
            raise bus.RetryLater(f"notification webhook answered {response.status_code}")
        metrics.HANDOFF_NOTIFICATIONS.labels(notification.tenant, "delivered").inc()

    def _failed(self, notification: handoff_pb2.AgentNotification, msg: Msg, **why: Any) -> None:
        metrics.HANDOFF_NOTIFICATIONS.labels(notification.tenant, "failed").inc()
        log.warning(
            "notification not delivered",
            tenant=notification.tenant,
            notification_event=notification.event,
            notification_id=notification.notification_id,
            attempt=msg.metadata.num_delivered,
            **why,
        )

    async def dead_lettered(self, msg: Msg) -> None:
        """The consumer gave up on a notification after its last attempt: count it and say so."""
        try:
            notification = handoff_pb2.AgentNotification.FromString(msg.data)
        except DecodeError:  # dead-lettered for being undecodable: the subject still names the tenant
            notification = handoff_pb2.AgentNotification()
        tenant = catalogue.tenant_of(msg.subject)
        metrics.HANDOFF_NOTIFICATIONS.labels(tenant, "dead_lettered").inc()
        log.error(
            "notification dead-lettered",
            tenant=tenant,
            notification_event=notification.event,
            notification_id=notification.notification_id,
            deliveries=msg.metadata.num_delivered,
        )
