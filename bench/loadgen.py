"""The load generator: pre-signed Meta webhooks sent by a lean HTTP/1.1 keep-alive client.

Why a hand-rolled client and not httpx: httpx costs roughly 0.5–1 ms of Python per request
(its transport, pool, header models and event hooks), so one core driving it tops out at a few
hundred to ~1,000 requests/s and would itself become the bottleneck, and its latency would be
part of what we measure. Here a request is one pre-built `bytes` object written to an asyncio
stream and an answer is one `readuntil` plus a `readexactly`: tens of microseconds per request
on uvloop, so the generator stays far from saturation at 1,000 req/s (the report shows the
generator's own dispatch lag and CPU as evidence).

Open loop (as wrk2 does): request i is *scheduled* at t0 + i/rate whatever happened before it.
A dispatcher hands due requests to a pool of keep-alive connections; when every connection is
busy a request waits in the queue, and that wait counts. Latency is reported both from the
scheduled time (corrected for coordinated omission: what a sender on Meta's side would see) and
from the moment the request was written (service time).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from zapflow.whatsapp.signature import SIGNATURE_HEADER, sign

# --- payloads ---------------------------------------------------------------------------------


def webhook_body(phone_number_id: str, contact: str, wamid: str, text: str, epoch: int) -> bytes:
    """One inbound text message, shaped as Meta's documentation shows it."""
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": "15550000000", "phone_number_id": phone_number_id},
                            "contacts": [{"profile": {"name": "Bench Customer"}, "wa_id": contact}],
                            "messages": [
                                {
                                    "from": contact,
                                    "id": wamid,
                                    "timestamp": str(epoch),
                                    "type": "text",
                                    "text": {"body": text},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def http_post(host: str, port: int, path: str, body: bytes, app_secret: str) -> bytes:
    """The whole HTTP/1.1 request, signed as Meta signs it, ready to be written as is."""
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "User-Agent: facebookexternalua\r\n"
        "Content-Type: application/json\r\n"
        f"{SIGNATURE_HEADER}: {sign(body, app_secret)}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode() + body


# --- the client -------------------------------------------------------------------------------


class HttpError(Exception):
    """The connection failed or the answer was not HTTP/1.1 as expected."""


class Connection:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.reconnects = 0

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Write one request, read its answer: (status, body)."""
        if self._writer is None:
            self.reconnects += 1
            await self.open()
        assert self._reader is not None
        assert self._writer is not None
        try:
            self._writer.write(raw)
            head = await self._reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            chunked = close = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif name == b"connection":
                    close = b"close" in value.lower()
            if chunked:
                body = await self._read_chunked()
            else:
                body = await self._reader.readexactly(length) if length else b""
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
            self.close()
            raise HttpError(f"{type(error).__name__}: {error}") from error
        if close:
            self.close()
        return status, body

    async def _read_chunked(self) -> bytes:
        assert self._reader is not None
        chunks = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")
                return b"".join(chunks)
            chunks.append(await self._reader.readexactly(size))
            await self._reader.readexactly(2)


@dataclass
class LoadResult:
    """Per-request timings (perf_counter seconds) and statuses of one run."""

    t0: float  # perf_counter of the first scheduled request
    wall_t0: float  # time.time() at t0: maps perf times to the services' epoch timestamps
    scheduled: list[float]
    sent: list[float]
    done: list[float]
    status: list[int]  # HTTP status; -1 connection error, -2 never answered before the deadline
    errors: Counter[str] = field(default_factory=Counter)
    dispatch_lag: list[float] = field(default_factory=list)  # generator lateness, per request
    reconnects: int = 0

    def wall(self, perf: float) -> float:
        return self.wall_t0 + (perf - self.t0)

    @property
    def ok_indexes(self) -> list[int]:
        return [i for i, s in enumerate(self.status) if s == 200]

    def latencies_from_schedule(self) -> list[float]:
        return [self.done[i] - self.scheduled[i] for i in range(len(self.status)) if self.status[i] == 200]

    def service_times(self) -> list[float]:
        return [self.done[i] - self.sent[i] for i in range(len(self.status)) if self.status[i] == 200]

    def statuses(self) -> dict[str, int]:
        return {str(k): v for k, v in sorted(Counter(self.status).items())}


async def _open_all(host: str, port: int, count: int) -> list[Connection]:
    connections = [Connection(host, port) for _ in range(count)]
    await asyncio.gather(*(c.open() for c in connections))
    return connections


async def open_loop(
    host: str,
    port: int,
    requests: Sequence[bytes],
    rate: float,
    connections: int,
    drain_timeout_s: float = 30.0,
) -> LoadResult:
    """Send request i at t0 + i/rate over a pool of keep-alive connections (open loop)."""
    count = len(requests)
    pool = await _open_all(host, port, connections)
    t0 = time.perf_counter() + 0.1
    wall_t0 = time.time() + (t0 - time.perf_counter())
    interval = 1.0 / rate
    result = LoadResult(
        t0=t0,
        wall_t0=wall_t0,
        scheduled=[t0 + i * interval for i in range(count)],
        sent=[0.0] * count,
        done=[0.0] * count,
        status=[-2] * count,
    )
    queue: asyncio.Queue[int] = asyncio.Queue()
    scheduled, sent, done, status, errors = result.scheduled, result.sent, result.done, result.status, result.errors
    perf = time.perf_counter

    async def worker(connection: Connection) -> None:
        while True:
            i = await queue.get()
            if i < 0:
                return
            sent[i] = perf()
            try:
                status[i], _ = await connection.request(requests[i])
            except HttpError as error:
                status[i] = -1
                errors[str(error).split(":")[0]] += 1
            done[i] = perf()

    async def dispatcher() -> None:
        i = 0
        lag = result.dispatch_lag
        while i < count:
            now = perf()
            while i < count and scheduled[i] <= now:
                queue.put_nowait(i)
                lag.append(now - scheduled[i])
                i += 1
            if i < count:
                await asyncio.sleep(max(0.0, scheduled[i] - perf()))
        for _ in pool:
            queue.put_nowait(-1)

    workers = [asyncio.create_task(worker(c)) for c in pool]
    try:
        await dispatcher()
        finished, pending = await asyncio.wait(workers, timeout=drain_timeout_s)
        for task in pending:
            task.cancel()
        for task in finished:
            task.result()
    finally:
        for task in workers:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*workers, return_exceptions=True)
        result.reconnects = sum(c.reconnects for c in pool)
        for connection in pool:
            connection.close()
    for i in range(count):
        if status[i] == -2:
            errors["no answer before the deadline"] += 1
    return result


async def closed_loop(
    host: str, port: int, requests: Sequence[bytes], connections: int, duration_s: float
) -> dict[str, Any]:
    """As fast as the server answers: `connections` requests always in flight, for a while.

    Measures capacity (the most the server accepts per second), not latency at a given load.
    """
    pool = await _open_all(host, port, connections)
    perf = time.perf_counter
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    cursor = iter(range(len(requests)))
    started = perf()
    deadline = started + duration_s

    async def worker(connection: Connection) -> None:
        for i in cursor:
            if perf() >= deadline:
                return
            begin = perf()
            try:
                answer, _ = await connection.request(requests[i])
            except HttpError:
                answer = -1
            statuses[answer] += 1
            if answer == 200:
                latencies.append(perf() - begin)

    try:
        await asyncio.wait_for(asyncio.gather(*(worker(c) for c in pool)), timeout=duration_s + 30)
    finally:
        for connection in pool:
            connection.close()
    elapsed = perf() - started
    return {
        "connections": connections,
        "duration_s": round(elapsed, 2),
        "requests": sum(statuses.values()),
        "accepted": statuses[200],
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "throughput_per_s": round(statuses[200] / elapsed, 1),
        "latencies": latencies,
        "exhausted": sum(statuses.values()) >= len(requests),
    }
