"""The gateway service: the WhatsApp webhook in, the Graph API egress out."""

from __future__ import annotations

from zapflow.gateway import webhook
from zapflow.gateway.runtime import GatewayParts, build
from zapflow.gateway.settings import GatewaySettings
from zapflow.platform import catalogue
from zapflow.platform.connections import Needs
from zapflow.platform.service import Service

GATEWAY = Service[GatewaySettings, GatewayParts](
    name="gateway",
    summary="The WhatsApp webhook and the Graph API egress.",
    needs=Needs(
        streams=(catalogue.INBOUND, catalogue.STATUS, catalogue.OUTBOUND, catalogue.EVENTS, catalogue.DEAD_LETTER)
    ),
    build=build,
    routers=lambda _: (webhook.router,),
)
