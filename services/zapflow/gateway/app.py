"""The gateway service: the WhatsApp webhook in, the Graph API egress out, together or in one role each."""

from __future__ import annotations

from zapflow.gateway import webhook
from zapflow.gateway.runtime import GatewayParts, with_egress, without_egress
from zapflow.gateway.settings import GatewayRole, GatewaySettings
from zapflow.platform import catalogue
from zapflow.platform.connections import Needs
from zapflow.platform.service import Service

SUMMARIES: dict[GatewayRole, str] = {
    "all": "The WhatsApp webhook and the Graph API egress.",
    "webhook": "The WhatsApp webhook: Meta's notifications into JetStream.",
    "egress": "The Graph API egress: outbound commands to WhatsApp (health and metrics only).",
}


def gateway_service(role: GatewayRole) -> Service[GatewaySettings, GatewayParts]:
    """The gateway in one role, declaring only the streams, routes and consumer that role uses."""
    receives, sends = role != "egress", role != "webhook"
    # The webhook publishes messages and statuses; egress consumes commands and publishes their
    # results. Both dead-letter: the webhook what it cannot read, egress's consumer what it gives up on.
    webhook_streams = (catalogue.INBOUND, catalogue.STATUS) if receives else ()
    egress_streams = (catalogue.OUTBOUND, catalogue.EVENTS) if sends else ()
    return Service(
        # The egress role's logs, traces and replicas (`zapflow status`) carry the name of its workload.
        name="egress" if role == "egress" else "gateway",
        summary=SUMMARIES[role],
        # Only egress keeps state in Redis (idempotency keys, send order, the rate limit).
        needs=Needs(streams=(*webhook_streams, *egress_streams, catalogue.DEAD_LETTER), redis=sends),
        build=with_egress if sends else without_egress,
        routers=lambda _: (webhook.router,) if receives else (),
    )


GATEWAY = gateway_service("all")
