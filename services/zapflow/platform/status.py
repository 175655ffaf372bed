"""`zapflow status`: what Flower showed for Celery, for zapflow, read over the one NATS connection.

Streams and consumers are JetStream's own figures; dead letters are counted by service and reason
from `ZF_DLQ`; tenants come from the registry; replicas and their health from the NATS service
API every service announces itself on (`platform/service.py`); the turn rate from `ZF_EVENTS`.
Nothing needs a service's HTTP port, so it reads a cluster's NATS as it reads `zapflow dev`'s.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Iterable
from contextlib import aclosing, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.micro.service import ServiceStats, ServiceVerb, control_subject
from rich.console import Console, Group, RenderableType
from rich.filesize import decimal
from rich.live import Live
from rich.table import Column, Table
from rich.text import Text

from zapflow.platform import catalogue
from zapflow.platform.connections import Connections
from zapflow.platform.deadletters import SCAN_CONSUMER_IDLE_S, STREAM, decode, letters_on, printable
from zapflow.tenants.model import BotTenant
from zapflow.tenants.registry import TenantRegistry

# Every replica answers $SRV.STATS at once; this long is left for those across a cluster.
DISCOVERY_S = 0.5
HEALTH_TIMEOUT_S = 1.0
# New dead letters up to this many are read one by one; past it, or after a purge, all are read again.
FOLLOW_LIMIT = 64
# The services that own consumers: shown even when no replica answers.
KNOWN_SERVICES = tuple(sorted({spec.service for spec in catalogue.ALL_CONSUMERS}))
# Rows of the terminal view; `--format json` has them all.
SHOWN_REASONS = 10
SHOWN_TENANTS = 20


@dataclass(frozen=True)
class StreamFigures:
    name: str
    exists: bool
    messages: int = 0
    bytes: int = 0
    consumers: int = 0


@dataclass(frozen=True)
class ConsumerFigures:
    stream: str
    name: str
    pending: int
    ack_pending: int
    redelivered: int
    last_active: datetime | None


@dataclass(frozen=True)
class ReasonCount:
    service: str
    reason: str
    count: int


@dataclass(frozen=True)
class Replica:
    """One process of a service, as it answered the NATS service API."""

    id: str
    version: str
    hostname: str
    pid: str
    started: datetime
    # None: it did not answer the health request in time.
    ready: bool | None
    checks: dict[str, bool]


@dataclass(frozen=True)
class ServiceFigures:
    name: str
    replicas: list[Replica]

    @property
    def ready(self) -> int:
        return sum(1 for replica in self.replicas if replica.ready)


@dataclass(frozen=True)
class TurnRate:
    window_s: float
    turns: int

    @property
    def per_second(self) -> float:
        return self.turns / self.window_s


@dataclass(frozen=True)
class Snapshot:
    at: datetime
    streams: list[StreamFigures]
    consumers: list[ConsumerFigures]
    dead_letters: list[ReasonCount]
    tenants: list[BotTenant]
    services: list[ServiceFigures]
    turns: TurnRate

    def document(self) -> dict[str, Any]:
        """The snapshot as JSON-ready values (`--format json`)."""
        by_service: Counter[str] = Counter()
        for reason in self.dead_letters:
            by_service[reason.service] += reason.count
        return {
            "at": self.at.isoformat(),
            "turns": {"window_s": self.turns.window_s, "count": self.turns.turns, "per_second": self.turns.per_second},
            "services": [
                {
                    "name": service.name,
                    "replicas": len(service.replicas),
                    "ready": service.ready,
                    "instances": [
                        {
                            **asdict(replica),
                            "started": replica.started.isoformat(),
                            "uptime_s": round((self.at - replica.started).total_seconds(), 3),
                        }
                        for replica in service.replicas
                    ],
                }
                for service in self.services
            ],
            "streams": [asdict(stream) for stream in self.streams],
            "consumers": [
                {**asdict(consumer), "last_active": _iso(consumer.last_active)} for consumer in self.consumers
            ],
            "dead_letters": {
                "total": sum(by_service.values()),
                "by_service": dict(sorted(by_service.items())),
                "by_reason": [asdict(reason) for reason in self.dead_letters],
            },
            "tenants": {
                "count": len(self.tenants),
                "tenants": [
                    {
                        "name": tenant.name,
                        "phone_number_id": tenant.spec.whatsapp.phone_number_id,
                        "responder": tenant.spec.bot.responder,
                    }
                    for tenant in self.tenants
                ],
            },
        }


# The reason is inside each letter (its subject has the service and the original subject only), so
# each letter is read once; a purge, or a burst past FOLLOW_LIMIT, makes the next count read them all.
@dataclass
class DeadLetterTally:
    """Dead letters by service and reason, kept current by reading only the letters new since the last count."""

    by_seq: dict[int, tuple[str, str]] = field(default_factory=dict)
    read_up_to: int = 0

    async def count(self, js: JetStreamContext) -> list[ReasonCount]:
        """Every (service, reason) and how many letters have it, most first."""
        try:
            state = (await js.stream_info(STREAM)).state
        except NotFoundError:
            self.by_seq, self.read_up_to = {}, 0
            return []
        # The oldest expire first (30 days, or a size limit).
        for seq in [seq for seq in self.by_seq if seq < state.first_seq]:
            del self.by_seq[seq]
        new = state.last_seq - self.read_up_to
        if self.read_up_to and 0 <= new <= FOLLOW_LIMIT:
            for seq in range(self.read_up_to + 1, state.last_seq + 1):
                await self._read(js, seq)
            self.read_up_to = state.last_seq
        if self.read_up_to != state.last_seq or self._held(state.last_seq) != state.messages:
            await self._read_all(js, state)
        counts = Counter(self.by_seq.values())
        return [
            ReasonCount(service, reason, count)
            for (service, reason), count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        ]

    async def _read(self, js: JetStreamContext, seq: int) -> None:
        try:
            stored = await js.get_msg(STREAM, seq=seq)
        except NotFoundError:
            return  # purged meanwhile
        letter = decode(seq, stored.subject or "", stored.data or b"", stored.time)
        self.by_seq[seq] = (letter.service, letter.reason)

    async def _read_all(self, js: JetStreamContext, state: api.StreamState) -> None:
        self.by_seq = {}
        if state.messages:
            async with aclosing(letters_on(js, catalogue.DEAD_LETTER.subjects)) as letters:
                async for letter in letters:
                    self.by_seq[letter.seq] = (letter.service, letter.reason)
        self.read_up_to = max(state.last_seq, *self.by_seq, 0)

    def _held(self, last_seq: int) -> int:
        return sum(1 for seq in self.by_seq if seq <= last_seq)


class StatusReader:
    """Snapshots over one connection, creating nothing; live, it follows the registry instead of reading it anew."""

    def __init__(self, connections: Connections, window_s: float, follow_tenants: bool = False) -> None:
        self._connections = connections
        self._window_s = window_s
        self._follow_tenants = follow_tenants
        self._dead_letters = DeadLetterTally()
        self._registry: TenantRegistry | None = None

    async def read(self) -> Snapshot:
        js = self._connections.js
        (streams, consumers), dead_letters, tenants, services, turns = await asyncio.gather(
            stream_figures(js),
            self._dead_letters.count(js),
            self._tenants(),
            replicas(self._connections.nc),
            turns_in(js, self._window_s),
        )
        return Snapshot(
            datetime.now(UTC), streams, consumers, dead_letters, tenants, services, TurnRate(self._window_s, turns)
        )

    async def close(self) -> None:
        if self._registry is not None:
            await self._registry.stop()

    async def _tenants(self) -> list[BotTenant]:
        if self._registry is None:
            try:
                # Opened, never created: a status is no reason to create the bucket on a NATS.
                bucket = await self._connections.js.key_value(self._connections.core.tenant_bucket)
            except BucketNotFoundError:
                return []  # no tenant applied yet
            self._registry = TenantRegistry(bucket)
            if self._follow_tenants:
                await self._registry.watch()
        if not self._follow_tenants:
            return await self._registry.load_all()
        return sorted(self._registry.all(), key=lambda tenant: tenant.name)


async def stream_figures(js: JetStreamContext) -> tuple[list[StreamFigures], list[ConsumerFigures]]:
    """zapflow's streams, and their durable consumers (a command's short-lived ones left out)."""
    streams: list[StreamFigures] = []
    consumers: list[ConsumerFigures] = []
    for spec in catalogue.ALL_STREAMS:
        try:
            state = (await js.stream_info(spec.name)).state
        except NotFoundError:
            streams.append(StreamFigures(spec.name, exists=False))
            continue
        streams.append(StreamFigures(spec.name, True, state.messages, state.bytes, state.consumer_count))
        consumers += [
            ConsumerFigures(
                spec.name,
                info.name,
                info.num_pending or 0,
                info.num_ack_pending or 0,
                info.num_redelivered or 0,
                _last_active(info),
            )
            for info in sorted(await js.consumers_info(spec.name), key=lambda info: info.name)
            if info.config.durable_name
        ]
    return streams, consumers


async def turns_in(js: JetStreamContext, window_s: float) -> int:
    """Turns answered in the last `window_s` seconds, counted by the server on ZF_EVENTS."""
    # A throwaway consumer that starts at that time and never fetches: its pending count is the
    # number. Stateless, so one snapshot has a rate too; the window is measured by this machine's clock.
    name = f"status-turns-{uuid.uuid4().hex}"
    config = api.ConsumerConfig(
        name=name,
        filter_subject=catalogue.events_of(catalogue.TURN),
        deliver_policy=api.DeliverPolicy.BY_START_TIME,
        opt_start_time=datetime.now(UTC) - timedelta(seconds=window_s),
        ack_policy=api.AckPolicy.NONE,
        inactive_threshold=SCAN_CONSUMER_IDLE_S,
        mem_storage=True,
        num_replicas=1,
    )
    try:
        info = await js.add_consumer(catalogue.EVENTS.name, config)
    except NotFoundError:
        return 0  # no ZF_EVENTS yet: no service has started
    try:
        return info.num_pending or 0
    finally:
        with suppress(NotFoundError):
            await js.delete_consumer(catalogue.EVENTS.name, name)


async def replicas(nc: NATS) -> list[ServiceFigures]:
    """Every zapflow service that answers the NATS service API, with each replica's health; known ones always."""
    inbox = nc.new_inbox()
    subscription = await nc.subscribe(inbox)
    answers: list[ServiceStats] = []
    try:
        await nc.publish(control_subject(ServiceVerb.STATS), b"", reply=inbox)
        deadline = asyncio.get_running_loop().time() + DISCOVERY_S
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                msg = await subscription.next_msg(timeout=left)
            except NatsTimeoutError:
                break
            answers += _zapflow_stats(msg.data)
    finally:
        await subscription.unsubscribe()
    health = await asyncio.gather(*(_health(nc, stats) for stats in answers))
    by_service: dict[str, list[Replica]] = {name: [] for name in KNOWN_SERVICES}
    for stats, (ready, checks) in zip(answers, health, strict=True):
        by_service.setdefault(stats.name.removeprefix(catalogue.SERVICE_API_PREFIX), []).append(
            Replica(
                id=stats.id,
                version=stats.version,
                hostname=stats.metadata.get("hostname", ""),
                pid=stats.metadata.get("pid", ""),
                started=stats.started.replace(tzinfo=UTC),
                ready=ready,
                checks=checks,
            )
        )
    return [
        ServiceFigures(name, sorted(found, key=lambda replica: (replica.hostname, replica.pid)))
        for name, found in sorted(by_service.items())
    ]


def _zapflow_stats(data: bytes) -> list[ServiceStats]:
    """The answer when a zapflow service gave it; other applications' services on the same NATS are left out."""
    try:
        answer = json.loads(data)
        if not str(answer.get("name", "")).startswith(catalogue.SERVICE_API_PREFIX):
            return []
        return [ServiceStats.from_dict(answer)]
    except (ValueError, KeyError, TypeError, AttributeError):
        return []


async def _health(nc: NATS, stats: ServiceStats) -> tuple[bool | None, dict[str, bool]]:
    subject = next((endpoint.subject for endpoint in stats.endpoints if endpoint.name == "health"), None)
    if subject is None:
        return None, {}
    try:
        answer = json.loads((await nc.request(subject, b"", timeout=HEALTH_TIMEOUT_S)).data)
    except (NatsTimeoutError, NoRespondersError, ValueError):
        return None, {}
    return bool(answer.get("ready")), {str(name): bool(ok) for name, ok in answer.get("checks", {}).items()}


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _last_active(info: api.ConsumerInfo) -> datetime | None:
    times = [seq.last_active for seq in (info.delivered, info.ack_floor) if seq is not None and seq.last_active]
    return max(times, default=None)


# --- the terminal view ---


def render(snapshot: Snapshot) -> RenderableType:
    """The snapshot as the tables the terminal shows."""
    turns = snapshot.turns
    heading = Text.assemble(
        ("zapflow status", "bold"),
        f"  {snapshot.at:%Y-%m-%d %H:%M:%S} UTC  turns: ",
        (f"{turns.per_second:.1f}/s", "bold"),
        f" over the last {turns.window_s:g} s ({turns.turns})",
    )
    return Group(
        heading,
        _services_table(snapshot),
        _streams_table(snapshot.streams),
        _consumers_table(snapshot),
        _dead_letters_table(snapshot.dead_letters),
        _tenants_table(snapshot.tenants),
    )


def _services_table(snapshot: Snapshot) -> Table:
    table = Table("service", "replica", "version", "up", "health", title="services", title_justify="left")
    for service in snapshot.services:
        if not service.replicas:
            table.add_row(service.name, Text("none seen", style="yellow"), "", "", "")
        for index, replica in enumerate(service.replicas):
            table.add_row(
                service.name if index == 0 else "",
                Text(f"{replica.hostname} pid {replica.pid}"),
                Text(replica.version),
                _duration((snapshot.at - replica.started).total_seconds()),
                _health_text(replica),
            )
    return table


def _health_text(replica: Replica) -> Text:
    if replica.ready is None:
        return Text("no answer", style="red")
    if replica.ready:
        return Text("ready", style="green")
    failing = ", ".join(name for name, ok in replica.checks.items() if not ok)
    return Text(f"not ready: {failing}", style="red")


def _streams_table(streams: Iterable[StreamFigures]) -> Table:
    table = Table("stream", "messages", "bytes", "consumers", title="streams", title_justify="left")
    for stream in streams:
        if stream.exists:
            table.add_row(stream.name, f"{stream.messages:,}", decimal(stream.bytes), str(stream.consumers))
        else:
            table.add_row(stream.name, Text("missing: no service has declared it yet", style="yellow"), "", "")
    return table


def _consumers_table(snapshot: Snapshot) -> Table:
    # The names are what a person looks for: the figures' headers wrap first on a narrow terminal.
    table = Table(
        Column("consumer", no_wrap=True), Column("stream", no_wrap=True), Column("pending", justify="right"),
        Column("ack pending", justify="right"), Column("redelivered", justify="right"), "last active",
        title="consumers", title_justify="left",
    )  # fmt: skip
    for consumer in snapshot.consumers:
        active = consumer.last_active
        table.add_row(
            Text(consumer.name),
            consumer.stream,
            Text(f"{consumer.pending:,}", style="bold" if consumer.pending else ""),
            f"{consumer.ack_pending:,}",
            Text(f"{consumer.redelivered:,}", style="yellow" if consumer.redelivered else ""),
            "never" if active is None else f"{_duration((snapshot.at - active).total_seconds())} ago",
        )
    return table


def _dead_letters_table(reasons: list[ReasonCount]) -> RenderableType:
    total = sum(reason.count for reason in reasons)
    if not reasons:
        return Text("dead letters: none")
    table = Table("service", "count", "reason", title=f"dead letters: {total:,}", title_justify="left")
    for reason in reasons[:SHOWN_REASONS]:
        table.add_row(Text(reason.service), f"{reason.count:,}", Text(printable(reason.reason)))
    if len(reasons) > SHOWN_REASONS:
        table.add_row("", "", Text(f"and {len(reasons) - SHOWN_REASONS} other reasons", style="dim"))
    return table


def _tenants_table(tenants: list[BotTenant]) -> Table:
    table = Table("tenant", "phone number id", "responder", title=f"tenants: {len(tenants)}", title_justify="left")
    for tenant in tenants[:SHOWN_TENANTS]:
        table.add_row(tenant.name, tenant.spec.whatsapp.phone_number_id, tenant.spec.bot.responder)
    if len(tenants) > SHOWN_TENANTS:
        table.add_row(Text(f"and {len(tenants) - SHOWN_TENANTS} more", style="dim"), "", "")
    return table


def _duration(seconds: float) -> str:
    """A duration as its two largest units: 3d 4h, 5m 2s, 12s."""
    whole = max(0, int(seconds))
    parts = [(whole // 86_400, "d"), (whole % 86_400 // 3600, "h"), (whole % 3600 // 60, "m"), (whole % 60, "s")]
    shown = [f"{value}{unit}" for value, unit in parts if value]
    return " ".join(shown[:2]) or "0s"


async def watch(reader: StatusReader, interval_s: float, console: Console) -> None:
    """Refresh the view every `interval_s` seconds until cancelled (Ctrl-C)."""
    loop = asyncio.get_running_loop()
    try:
        with Live(console=console, auto_refresh=False) as live:
            while True:
                started = loop.time()
                live.update(render(await reader.read()), refresh=True)
                await asyncio.sleep(max(0.0, started + interval_s - loop.time()))
    finally:
        await reader.close()
