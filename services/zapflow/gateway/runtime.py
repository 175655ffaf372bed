"""What the gateway builds on the platform's connections: its Graph API client and egress, in the roles that send."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

import aiohttp
from fastapi import Depends

from zapflow.gateway.egress import Egress
from zapflow.gateway.settings import GatewaySettings
from zapflow.platform import catalogue
from zapflow.platform.connections import Connections
from zapflow.platform.service import Runtime, runtime_dependency
from zapflow.v1 import outbound_pb2


@dataclass(frozen=True)
class GatewayParts:
    # None in the webhook role, which sends nothing.
    egress: Egress | None


@asynccontextmanager
async def without_egress(_settings: GatewaySettings, _connections: Connections) -> AsyncIterator[GatewayParts]:
    """The webhook role's parts: the webhook runs on the connections alone."""
    yield GatewayParts(egress=None)


@asynccontextmanager
async def with_egress(settings: GatewaySettings, connections: Connections) -> AsyncIterator[GatewayParts]:
    """The Graph API client and the egress consumer of outbound commands."""
    # aiohttp rather than httpx: httpx cost about 1 ms of CPU per Graph API call, nearly half
    # the gateway's CPU while egress drained a backlog (docs/benchmark.md has the profile).
    http = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=settings.graph_timeout_s, connect=settings.graph_connect_timeout_s),
        connector=aiohttp.TCPConnector(limit=settings.graph_connections),
    )
    try:
        egress = Egress(connections.js, connections.redis, connections.registry, http, settings)
        spec = dataclasses.replace(catalogue.EGRESS, ack_wait_s=settings.egress_ack_wait_s)
        await connections.consume(spec, outbound_pb2.OutboundCommand, egress.handle, egress.settled)
        yield GatewayParts(egress)
    finally:
        # The factory has stopped the egress consumer by now: no Graph API call is left running.
        await http.close()


GatewayRuntime = Runtime[GatewaySettings, GatewayParts]
CurrentRuntime = Annotated[GatewayRuntime, Depends(runtime_dependency(GatewaySettings, GatewayParts))]
