"""Experiments only: run a zapflow service with proposed fixes monkeypatched in.

    python bench/patched.py PATCH[,PATCH...] <zapflow arguments>

`bench/run.py --patch ...` starts the services through this launcher so that a fix proposed in
bench/README.md can be *measured* before anyone edits services/. The default benchmark never
uses it, and a patched run says so in its report. Each patch mirrors one proposed change:

  async-deps             gateway: the `get_runtime` dependency as `async def` (FastAPI runs a
                         plain `def` dependency in a worker thread for every request)
  fastapi-telemetry-off  FastAPI(telemetry={"tracing": False, ...}): no built-in server and
                         operation spans on top of zapflow's own
  redis-blocking-pool    connect_redis with a BlockingConnectionPool: a burst waits for a free
                         connection instead of failing with "Too many connections"
  inflight-first-contact PendingTurn.record() keeps first_contact, so a re-run in-flight turn
                         does not fail with KeyError forever
  egress-http-pool       egress's httpx client keeps as many idle keep-alive connections as it
                         uses (httpx keeps 20 by default and closes the others after each use)
  gcra-reserve           the rate limiter reserves the caller's slot in one script call and the
                         caller sleeps until it, instead of every waiter polling the script again
  closer-one-trip        the conversation closer takes the locks of every due contact in one
                         pipelined round trip per tick, instead of one awaited SET NX per contact
  turn-cap               the closer starts a new turn only while fewer than 32 of this replica's
                         turns run (the others stay due and are taken on a later tick)
  egress-lean-http       egress calls the Graph API with a minimal keep-alive HTTP/1.1 client (the
                         bench's own, plain http only) instead of httpx: an upper bound of what a
                         cheaper client (e.g. aiohttp, or httpx's per-request overhead removed) gains
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable
from typing import Any

PATCHES: dict[str, Callable[[], None]] = {}


def skipped(name: str) -> None:
    """The services already contain this change: leave them as they are."""
    print(f"bench/patched.py: {name} already in the services, not patched", file=sys.stderr)


def patch(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def register(function: Callable[[], None]) -> Callable[[], None]:
        PATCHES[name] = function
        return function

    return register


@patch("async-deps")
def _async_dependencies() -> None:
    from typing import Annotated

    from fastapi import Depends, Request

    import zapflow.gateway.runtime as runtime

    if inspect.iscoroutinefunction(runtime.get_runtime):
        return skipped("async-deps")

    async def get_runtime(request):  # type: ignore[no-untyped-def]
        return request.app.state.runtime

    # Real objects, not strings: FastAPI resolves a dependency's parameters from them.
    get_runtime.__annotations__ = {"request": Request, "return": runtime.GatewayRuntime}

    runtime.get_runtime = get_runtime  # type: ignore[assignment]
    # webhook.py imports `Runtime` when the gateway app is built, after this.
    runtime.Runtime = Annotated[runtime.GatewayRuntime, Depends(get_runtime)]  # type: ignore[misc]


@patch("fastapi-telemetry-off")
def _fastapi_telemetry_off() -> None:
    import fastapi

    original = fastapi.FastAPI.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("telemetry", {"tracing": False, "metrics": False, "logs": False})
        original(self, *args, **kwargs)

    fastapi.FastAPI.__init__ = init  # type: ignore[method-assign]


@patch("redis-blocking-pool")
def _redis_blocking_pool() -> None:
    from redis.asyncio import BlockingConnectionPool, Redis

    import zapflow.core.state as state

    if "BlockingConnectionPool" in inspect.getsource(state.connect_redis):
        return skipped("redis-blocking-pool")

    def connect_redis(url: str, max_connections: int = 64) -> Redis:
        pool = BlockingConnectionPool.from_url(
            url,
            decode_responses=True,
            health_check_interval=10,
            socket_connect_timeout=2,
            max_connections=max_connections,
            timeout=10,
        )
        return Redis(connection_pool=pool)

    state.connect_redis = connect_redis


@patch("inflight-first-contact")
def _inflight_first_contact() -> None:
    from zapflow.conversation import engine

    if '"first_contact"' in inspect.getsource(engine.PendingTurn.record):
        return skipped("inflight-first-contact")

    def record(self: Any) -> str:
        return json.dumps(
            {
                "turn_id": self.turn_id,
                "seqs": [s for s, _ in self.messages],
                "dups": self.duplicates,
                "last": self.last_seq,
                "first_contact": getattr(self, "first_contact", False),
            }
        )

    engine.PendingTurn.record = record  # type: ignore[method-assign]


@patch("egress-http-pool")
def _egress_http_pool() -> None:
    import httpx

    import zapflow.gateway.runtime as runtime

    if "max_keepalive_connections" in inspect.getsource(runtime.GatewayRuntime.start):
        return skipped("egress-http-pool")

    class PooledClient(httpx.AsyncClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("limits", httpx.Limits(max_connections=100, max_keepalive_connections=100))
            super().__init__(*args, **kwargs)

    runtime.httpx = type("httpx", (), {"AsyncClient": PooledClient, "Limits": httpx.Limits})  # type: ignore[assignment]


_GCRA_RESERVE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + tonumber(now_parts[2]) / 1000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
local allowed_at = tat - burst
if now < allowed_at then return math.ceil(allowed_at - now) end
return 0
"""


@patch("gcra-reserve")
def _gcra_reserve() -> None:
    import asyncio

    import zapflow.core.state as state

    if not hasattr(state, "_GCRA"):
        return skipped("gcra-reserve")
    state._GCRA = _GCRA_RESERVE

    async def acquire(self: Any, tenant: str, phone_number_id: str, per_second: float, burst: int = 1) -> float:
        interval_ms = 1000.0 / per_second
        key = state.tenant_key(tenant, "rate", phone_number_id)
        wait_ms = int(await self._script(keys=[key], args=[interval_ms, interval_ms * (burst - 1)]))
        waited = max(0, wait_ms) / 1000
        if waited:
            await asyncio.sleep(waited)  # the slot is ours: no second call
        state.metrics.RATE_LIMIT_WAIT_SECONDS.labels(tenant).observe(waited)
        return waited

    state.RateLimiter.acquire = acquire  # type: ignore[method-assign]


@patch("egress-lean-http")
def _egress_lean_http() -> None:
    import asyncio
    import time
    from pathlib import Path
    from urllib.parse import urlsplit

    import httpx

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import zapflow.gateway.runtime as runtime
    from bench.loadgen import Connection, HttpError

    class LeanResponse:
        def __init__(self, status: int, body: bytes) -> None:
            self.status_code = status
            self._body = body
            self.headers: dict[str, str] = {}  # Retry-After is not parsed in this experiment

        @property
        def is_success(self) -> bool:
            return 200 <= self.status_code < 300

        def json(self) -> Any:
            return json.loads(self._body)

    class LeanClient:
        def __init__(self, timeout: float = 10.0, **_: Any) -> None:
            self._timeout = timeout
            self._idle: dict[tuple[str, int], list[tuple[float, Connection]]] = {}

        async def post(self, url: str, json: Any = None, headers: dict[str, str] | None = None) -> LeanResponse:
            parts = urlsplit(url)
            host, port = parts.hostname or "127.0.0.1", parts.port or 80
            idle = self._idle.setdefault((host, port), [])
            connection = None
            while idle:
                used, candidate = idle.pop()
                if time.monotonic() - used < 4.0:  # uvicorn closes idle connections after 5 s
                    connection = candidate
                    break
                candidate.close()
            if connection is None:
                connection = Connection(host, port)
                try:
                    await connection.open()
                except OSError as error:
                    raise httpx.ConnectError(str(error)) from error
            body = _dumps(json)
            head = (
                f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
                + "\r\n"
            )
            try:
                status, answer = await asyncio.wait_for(connection.request(head.encode() + body), self._timeout)
            except HttpError as error:
                raise httpx.ReadError(str(error)) from error  # it may have arrived: uncertain
            except TimeoutError as error:
                connection.close()
                raise httpx.ReadTimeout("timeout") from error
            idle.append((time.monotonic(), connection))
            return LeanResponse(status, answer)

        async def aclose(self) -> None:
            for idle in self._idle.values():
                for _, connection in idle:
                    connection.close()

    def _dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    runtime.httpx = type("httpx", (), {"AsyncClient": LeanClient, "Limits": httpx.Limits})  # type: ignore[assignment]


@patch("closer-one-trip")
def _closer_one_trip() -> None:
    import asyncio
    import secrets
    import time

    from zapflow.conversation import engine
    from zapflow.core import metrics

    if "pipeline" in inspect.getsource(engine.Engine._close_once):
        return skipped("closer-one-trip")

    async def close_once(self: Any) -> None:
        now_ms = int(time.time() * 1000)
        due = await self._redis.zrangebyscore(engine.DUE_KEY, "-inf", now_ms, start=0, num=self._settings.closer_batch)
        candidates = []
        for entry in due:
            member = str(entry)
            tenant, _, contact = member.partition("|")
            if (tenant, contact) not in self._running:
                candidates.append((member, engine.ContactKeys(tenant, contact), secrets.token_hex(8)))
        if not candidates:
            return
        lease_ms = int(self._settings.turn_lease_s * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            for _, keys, token in candidates:
                pipe.set(keys.lock, token, nx=True, px=lease_ms)
            taken = await pipe.execute()
        retry = {}
        for (member, keys, token), ok in zip(candidates, taken, strict=True):
            if not ok:
                metrics.LOCK_WAITS.labels(keys.tenant).inc()
                retry[member] = now_ms + self._settings.lock_retry_ms
                continue
            self._running.add((keys.tenant, keys.contact))
            task = asyncio.create_task(self._run_turn(keys, token))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if retry:
            await self._redis.zadd(engine.DUE_KEY, retry, xx=True, gt=True)

    engine.Engine._close_once = close_once  # type: ignore[method-assign]


@patch("turn-cap")
def _turn_cap(limit: int = 32) -> None:
    import asyncio
    import secrets
    import time

    from zapflow.conversation import engine
    from zapflow.core import metrics

    async def close_once(self: Any) -> None:
        room = limit - len(self._running)
        if room <= 0:
            return
        now_ms = int(time.time() * 1000)
        due = await self._redis.zrangebyscore(engine.DUE_KEY, "-inf", now_ms, start=0, num=self._settings.closer_batch)
        candidates = []
        for entry in due:
            tenant, _, contact = str(entry).partition("|")
            if (tenant, contact) not in self._running:
                candidates.append((str(entry), engine.ContactKeys(tenant, contact), secrets.token_hex(8)))
        candidates = candidates[:room]
        if not candidates:
            return
        lease_ms = int(self._settings.turn_lease_s * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            for _, keys, token in candidates:
                pipe.set(keys.lock, token, nx=True, px=lease_ms)
            locked = await pipe.execute()
        busy = {}
        for (member, keys, token), acquired in zip(candidates, locked, strict=True):
            if not acquired:
                metrics.LOCK_WAITS.labels(keys.tenant).inc()
                busy[member] = now_ms + self._settings.lock_retry_ms
                continue
            self._running.add((keys.tenant, keys.contact))
            task = asyncio.create_task(self._run_turn(keys, token))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if busy:
            await self._redis.zadd(engine.DUE_KEY, busy, xx=True, gt=True)

    engine.Engine._close_once = close_once  # type: ignore[method-assign]


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    names = [n for n in sys.argv[1].split(",") if n]
    unknown = [n for n in names if n not in PATCHES]
    if unknown:
        raise SystemExit(f"unknown patch(es): {unknown}; known: {sorted(PATCHES)}")
    # Before the service's modules import what is patched; connect_redis first, since the
    # gateway patch imports modules that bind it.
    for name in sorted(names, key=lambda n: n != "redis-blocking-pool"):
        PATCHES[name]()
    from zapflow.cli import app

    sys.argv = ["zapflow", *sys.argv[2:]]
    app()


if __name__ == "__main__":
    main()
