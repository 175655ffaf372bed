"""The gateway's FastAPI application and its entry point."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from zapflow.gateway import webhook
from zapflow.gateway.runtime import GatewayRuntime
from zapflow.gateway.settings import GatewaySettings
from zapflow.platform.http import FASTAPI_TELEMETRY_OFF, ops_router
from zapflow.platform.logging import configure_logging
from zapflow.platform.telemetry import configure_tracing


def create_app(settings: GatewaySettings) -> FastAPI:
    holder: dict[str, GatewayRuntime] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await GatewayRuntime.start(settings)
        app.state.runtime = holder["runtime"] = runtime
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="zapflow gateway", lifespan=lifespan, docs_url=None, redoc_url=None, telemetry=FASTAPI_TELEMETRY_OFF
    )
    app.include_router(webhook.router)
    app.include_router(
        ops_router(
            lambda: holder["runtime"].service if holder else None,
            settings.core.metrics_token,
        )
    )

    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> JSONResponse:
        # A 500 with a reason and no traceback; Meta retries it, nothing accepted is lost.
        return JSONResponse({"detail": f"internal error: {type(error).__name__}"}, status_code=500)

    return app


def run(settings: GatewaySettings) -> None:
    configure_logging("gateway", settings.core.log_level, settings.core.log_json)
    configure_tracing("gateway", settings.core.otlp_endpoint)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        server_header=False,
    )
