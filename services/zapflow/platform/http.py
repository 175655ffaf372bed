"""HTTP pieces every service exposes: health, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Annotated

import uvicorn
from fastapi import APIRouter, FastAPI, Header, HTTPException, Request, Response
from fastapi.telemetry import TelemetryConfig
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, SecretStr

from zapflow.platform.connections import Connections

# FastAPI's built-in telemetry would add a second set of server spans and metrics on every
# request; zapflow's own spans and Prometheus metrics are the ones dashboards use.
FASTAPI_TELEMETRY_OFF: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


class InLoopServer(uvicorn.Server):
    """A uvicorn server run as a task of a loop whose signals belong to someone else (kopf, pytest)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Problem(BaseModel):
    """A refusal: what is wrong with the request, or what the service lacks to answer it."""

    detail: str


def problems(*statuses: int) -> dict[int | str, dict[str, object]]:
    """The `responses` of a route that refuses with these statuses, each a Problem, for its OpenAPI document."""
    return {status: {"model": Problem} for status in statuses}


def ops_router(connections: Callable[[], Connections | None], metrics_token: SecretStr | None) -> APIRouter:
    """/healthz (the process answers), /readyz (its dependencies are usable), /metrics."""
    router = APIRouter(tags=["operations"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(response: Response) -> dict[str, object]:
        """Every dependency this service needs is usable."""
        current = connections()
        checks = await current.readiness() if current is not None else {"started": False}
        ready = all(checks.values())
        response.status_code = 200 if ready else 503
        return {"ready": ready, "checks": checks}

    @router.get("/metrics")
    async def metrics(authorization: str | None = Header(default=None)) -> Response:
        """Prometheus metrics of this process."""
        if metrics_token is not None and not bearer_matches(authorization, metrics_token):
            raise HTTPException(
                status_code=401, detail="metrics require a bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


def bearer_matches(authorization: str | None, token: SecretStr) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time."""
    expected = f"Bearer {token.get_secret_value()}"
    return authorization is not None and hmac.compare_digest(authorization.encode(), expected.encode())


def require_admin(admin_token: SecretStr) -> Callable[[str | None], Awaitable[None]]:
    """A dependency that lets only callers holding ZAPFLOW_ADMIN_TOKEN through."""

    async def check(authorization: Annotated[str | None, Header()] = None) -> None:
        if not bearer_matches(authorization, admin_token):
            raise HTTPException(
                status_code=401,
                detail="admin endpoints require Authorization: Bearer <ZAPFLOW_ADMIN_TOKEN>",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


async def read_bounded_body(request: Request, limit: int, too_large: str) -> bytes:
    """The request's body, refused with 413 (`too_large` says why) once it passes `limit` bytes, declared or read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(status_code=413, detail=too_large)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(status_code=413, detail=too_large)
        chunks.append(chunk)
    return b"".join(chunks)


@contextlib.asynccontextmanager
async def operations_server(
    host: str, port: int, connections: Connections, metrics_token: SecretStr | None
) -> AsyncIterator[None]:
    """Serve /healthz, /readyz and /metrics from a process that is not a FastAPI service (the operator), in its loop."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, telemetry=FASTAPI_TELEMETRY_OFF)
    app.include_router(ops_router(lambda: connections, metrics_token))
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False, server_header=False, lifespan="off"
    )
    server = InLoopServer(config)
    task = asyncio.create_task(server.serve(), name="operations-server")
    try:
        yield
    finally:
        server.should_exit = True
        await task
