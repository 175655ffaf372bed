"""What the gateway holds while it runs: the shared service runtime plus its Graph API client."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated

import aiohttp
from fastapi import Depends, Request

from zapflow.gateway.egress import Egress
from zapflow.gateway.settings import GatewaySettings
from zapflow.platform import catalogue
from zapflow.platform.runtime import ServiceRuntime
from zapflow.v1 import outbound_pb2

GATEWAY_STREAMS = (catalogue.INBOUND, catalogue.STATUS, catalogue.OUTBOUND, catalogue.EVENTS, catalogue.DEAD_LETTER)


@dataclass
class GatewayRuntime:
    settings: GatewaySettings
    service: ServiceRuntime
    http: aiohttp.ClientSession

    @classmethod
    async def start(cls, settings: GatewaySettings) -> GatewayRuntime:
        service = await ServiceRuntime.start("gateway", settings.core, GATEWAY_STREAMS)
        # aiohttp rather than httpx: httpx cost about 1 ms of CPU per Graph API call, nearly half
        # the gateway's CPU while egress drained a backlog (bench/README.md has the profile).
        http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=settings.graph_timeout_s, connect=settings.graph_connect_timeout_s),
            connector=aiohttp.TCPConnector(limit=settings.graph_connections),
        )
        runtime = cls(settings, service, http)
        egress = Egress(service.js, service.redis, service.registry, runtime.http, settings)
        spec = dataclasses.replace(catalogue.EGRESS, ack_wait_s=settings.egress_ack_wait_s)
        await service.consume(spec, outbound_pb2.OutboundCommand, egress.handle, egress.settled)
        return runtime

    async def stop(self) -> None:
        await self.service.stop()
        await self.http.close()


async def get_runtime(request: Request) -> GatewayRuntime:
    # async: FastAPI runs a plain `def` dependency in a worker thread on every request.
    runtime: GatewayRuntime = request.app.state.runtime
    return runtime


Runtime = Annotated[GatewayRuntime, Depends(get_runtime)]
