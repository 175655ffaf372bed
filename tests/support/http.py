"""Serve an ASGI app with uvicorn on a free port inside the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import uvicorn

from zapflow.platform.http import InLoopServer

START_TIMEOUT_S = 30.0
# Connections still open when a test leaves `serve` (an event stream, a hung client) get this
# long before uvicorn cancels them: a forgotten stream costs seconds, never the whole timeout.
GRACEFUL_SHUTDOWN_S = 3
STOP_TIMEOUT_S = GRACEFUL_SHUTDOWN_S + 10.0
_STARTED_POLL_S = 0.005


def _base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def bound_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A TCP socket bound to the port (0: a free one) for `serve`: the port is ours from now on.

    Bind first when a peer must know the address before the server starts (the sandbox, the
    gateway's webhook URL): a port only looked up free may be taken by another test meanwhile.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio only sets TCP_NODELAY on sockets that do, and without it
    # every response pays a 40 ms Nagle / delayed-ACK stall.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.asynccontextmanager
async def serve(
    app: Callable[..., Any], host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None
) -> AsyncIterator[str]:
    """Run the app (its lifespan included) and yield its base URL; stop it on exit.

    Port 0 picks a free port; `sock` (from `bound_socket`) serves on a port bound beforehand. Either
    way the port is held from the first moment; readiness is uvicorn's own `started` flag.
    """
    if sock is None:
        sock = bound_socket(host, port)
    host = sock.getsockname()[0]
    bound_port: int = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    # Signals belong to pytest: Ctrl-C must stop the run, not quietly stop one server of it.
    server = InLoopServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while not server.started:
                if task.done():
                    task.result()  # raises the start-up error, if there was one
                    raise RuntimeError("the server stopped during start-up (see its log)")
                await asyncio.sleep(_STARTED_POLL_S)
        yield _base_url(host, bound_port)
    finally:
        server.should_exit = True
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await task
        finally:
            sock.close()
