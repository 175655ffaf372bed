"""The service factory: one way to build a zapflow service process from its settings.

A service declares what it connects to (`Needs`), how it builds its own parts once those
connections are up (`build`, an async context manager that also stops them), and its routers.
The factory adds the rest, the same for every service: logging and tracing, the lifespan that
opens and closes the connections, /healthz /readyz /metrics, an answer with a reason instead of a
traceback for unexpected errors, a typed runtime for routes (`runtime_dependency`), and the HTTP
server.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from typing import Generic, TypeVar

import nats.micro
import uvicorn
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from nats.micro.request import Request as ServiceRequest

from zapflow import __version__
from zapflow.platform import catalogue
from zapflow.platform.connections import Connections, Needs, connected
from zapflow.platform.http import FASTAPI_TELEMETRY_OFF, ops_router
from zapflow.platform.logging import configure_logging, get_logger
from zapflow.platform.settings import ServiceSettings
from zapflow.platform.telemetry import configure_tracing

log = get_logger(__name__)

SettingsT = TypeVar("SettingsT", bound=ServiceSettings)
PartsT = TypeVar("PartsT")
# Open requests (a chat's event stream) get this long to finish when the server stops.
GRACEFUL_SHUTDOWN_S = 5


@dataclass
class Runtime(Generic[SettingsT, PartsT]):
    """What a running service holds: its settings, its connections and its own parts."""

    settings: SettingsT
    connections: Connections
    parts: PartsT


@dataclass(frozen=True)
class Service(Generic[SettingsT, PartsT]):
    """The declaration of one service; `create_app` and `run` build the process from it."""

    name: str
    needs: Needs
    build: Callable[[SettingsT, Connections], AbstractAsyncContextManager[PartsT]]
    routers: Callable[[SettingsT], Sequence[APIRouter]] = lambda _: ()
    # Anything else the app needs before it serves (middleware); runs once per app.
    customise: Callable[[FastAPI, SettingsT], None] = lambda _app, _settings: None
    summary: str = ""


def create_app(service: Service[SettingsT, PartsT], settings: SettingsT) -> FastAPI:
    """The service as an ASGI app; its connections open in the lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with (
            connected(service.name, settings.core, service.needs) as connections,
            service.build(settings, connections) as parts,
            # Announced once built: a replica counts from when it can serve.
            announced(service.name, connections) if service.needs.bus or service.needs.tenants else nullcontext(),
        ):
            app.state.runtime = Runtime(settings, connections, parts)
            # What start-up loaded (modules, settings, tenants) lives as long as the process:
            # moved out of the collector's reach, a full collection scans only what serving
            # allocates, instead of pausing the event loop over every object the imports made.
            gc.freeze()
            log.info("service started", service=service.name)
            try:
                yield
            finally:
                # Stop taking messages before the parts stop: running handlers finish first.
                await connections.stop_consuming()

    app = FastAPI(
        title=f"zapflow {service.name}",
        summary=service.summary or None,
        lifespan=lifespan,
        # No OpenAPI document or docs pages: the gateway faces the Internet and the admin API
        # need not describe itself to whoever reaches it. `app.openapi()` still builds the
        # document (the tests fuzz every service from it); the sandbox serves its own.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        telemetry=FASTAPI_TELEMETRY_OFF,
    )
    for router in service.routers(settings):
        app.include_router(router)
    app.include_router(ops_router(lambda: _connections_or_none(app), settings.core.metrics_token))
    service.customise(app, settings)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's 422 with each reason and where, without echoing the input: it may be
        # megabytes, a secret the caller mistyped, or what JSON cannot encode (NaN, a lone
        # surrogate), which made the answer itself fail with a 500.
        reasons = [
            {
                "type": reason["type"],
                "loc": [_encodable(part) for part in reason["loc"]],
                "msg": _encodable(reason["msg"]),
            }
            for reason in error.errors()
        ]
        return JSONResponse({"detail": reasons}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> JSONResponse:
        # A reason and no traceback; the log has the traceback. For the webhook a 500 makes
        # Meta retry, so nothing accepted is lost.
        log.error("unexpected error", service=service.name, error=type(error).__name__, exc_info=error)
        return JSONResponse({"detail": f"internal error: {type(error).__name__}"}, status_code=500)

    return app


@asynccontextmanager
async def announced(name: str, connections: Connections) -> AsyncIterator[None]:
    """The process on the NATS service API, where `zapflow status` counts replicas and asks each one's health."""
    api = await nats.micro.add_service(
        connections.nc,
        name=catalogue.service_api_name(name),
        version=__version__,
        description=f"zapflow {name}",
        # In a cluster the host name is the pod's name.
        metadata={"hostname": socket.gethostname(), "pid": str(os.getpid())},
    )

    # The service's one endpoint, on the replica's own subject: what /readyz answers.
    async def health(request: ServiceRequest) -> None:
        checks = await connections.readiness()
        await request.respond(json.dumps({"ready": all(checks.values()), "checks": checks}).encode())

    try:
        await api.add_endpoint(name="health", subject=catalogue.health_subject(name, api.id), handler=health)
        yield
    finally:
        # Away from NATS, there is nothing to withdraw: the subscriptions end with the connection,
        # and draining them would wait for a server that is not there.
        if connections.nc.is_connected:
            await api.stop()


def run(service: Service[SettingsT, PartsT], settings: SettingsT) -> None:
    """Serve the service until SIGINT/SIGTERM (what `zapflow <service>` calls).

    Raises StoreError before serving when the service needs a database that is not migrated,
    so the command can say so instead of a server that never becomes ready.
    """
    if service.needs.database:
        from zapflow.store.migrate import require_migrated  # only services with a database pay for it

        asyncio.run(require_migrated(settings.core.database_url))
    configure_logging(service.name, settings.core.log_level, settings.core.log_json)
    configure_tracing(service.name, settings.core.otlp_endpoint)
    uvicorn.run(
        create_app(service, settings),
        host=settings.host,
        port=settings.port,
        # Logging is configured above; uvicorn's own config would replace it.
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )


def runtime_dependency(
    settings_type: type[SettingsT], parts_type: type[PartsT]
) -> Callable[[Request], Awaitable[Runtime[SettingsT, PartsT]]]:
    """A FastAPI dependency giving a route its service's runtime, typed.

    Each service names it once: `Annotated[Runtime[S, P], Depends(runtime_dependency(S, P))]`.
    """

    async def current(request: Request) -> Runtime[SettingsT, PartsT]:
        # async: FastAPI runs a plain `def` dependency in a worker thread on every request.
        runtime = getattr(request.app.state, "runtime", None)
        if not isinstance(runtime, Runtime):
            raise HTTPException(status_code=503, detail="the service is starting; try again")
        if not isinstance(runtime.settings, settings_type) or not isinstance(runtime.parts, parts_type):
            raise TypeError(f"this app does not run {settings_type.__name__} with {parts_type.__name__}")
        return runtime

    return current


def _encodable(part: int | str) -> int | str:
    """A key or message from the request, escaped where UTF-8 cannot encode it (a lone surrogate)."""
    return part.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(part, str) else part


def _connections_or_none(app: FastAPI) -> Connections | None:
    runtime = getattr(app.state, "runtime", None)
    return runtime.connections if isinstance(runtime, Runtime) else None
