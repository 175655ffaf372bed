"""What the benchmark measured, as typed results, and their JSON form (bench/results/latest.json).

The JSON keeps the layout of the runs recorded in bench/results/: a result that adds fields to a
group of figures (ingress to its webhook figures, say) writes them side by side, not nested.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.accounting import Accounting, summarise

if TYPE_CHECKING:
    from bench.options import Options
    from bench.targets import Targets

# Field metadata: write the field's own fields in place of the field (see `to_json`).
INLINE = {"inline": True}


@dataclass(frozen=True)
class Latency:
    """A distribution in milliseconds (nearest-rank percentiles); None where there was no sample."""

    count: int
    mean_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None

    @classmethod
    def of(cls, seconds: Iterable[float]) -> Latency:
        summary = summarise(seconds)

        def ms(name: str) -> float | None:
            value = summary[name]
            return None if value is None else float(value)

        return cls(
            count=int(summary["count"] or 0),
            mean_ms=ms("mean_ms"),
            p50_ms=ms("p50_ms"),
            p90_ms=ms("p90_ms"),
            p99_ms=ms("p99_ms"),
            p999_ms=ms("p999_ms"),
            max_ms=ms("max_ms"),
        )


# --- resources ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessUsage:
    cpu_pct_of_one_core: float
    peak_rss_mib: float


@dataclass(frozen=True)
class PhaseResources:
    """CPU (100% = one core, averaged over the phase) and peak RSS of every process during a phase."""

    wall_s: float
    processes: dict[str, ProcessUsage]
    total_cpu_pct: float

    @classmethod
    def from_monitor(cls, figures: Mapping[str, Any]) -> PhaseResources:
        """From what `bench.stack.ResourceMonitor.end()` returns."""
        return cls(
            wall_s=figures["wall_s"],
            processes={name: ProcessUsage(**usage) for name, usage in figures["processes"].items()},
            total_cpu_pct=figures["total_cpu_pct"],
        )


# --- phase 1: raw JetStream ---------------------------------------------------------------------


@dataclass(frozen=True)
class JetStreamThroughput:
    messages: int
    payload_bytes: int
    publish_failed: int
    publish_duplicates: int
    publish_per_s: float
    consumed: int
    consume_ack_per_s: float


@dataclass(frozen=True)
class RawJetStreamResult:
    throughput: JetStreamThroughput = field(metadata=INLINE)
    resources: PhaseResources


# --- phase 2: ingress ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DispatchLag:
    """How late the load generator handed requests over, in milliseconds."""

    p99: float | None
    max: float | None


@dataclass(frozen=True)
class WebhookFigures:
    """An open-loop run of signed webhooks; latency counts from each request's scheduled time."""

    offered_rate_per_s: float
    offered: int
    accepted: int
    errors: int
    statuses: dict[str, int]
    error_kinds: dict[str, int]
    reconnects: int
    throughput_per_s: float
    per_second_min: int
    per_second_max: int
    latency_from_schedule: Latency
    service_time: Latency
    generator_dispatch_lag_ms: DispatchLag


@dataclass(frozen=True)
class IngressResult:
    webhooks: WebhookFigures = field(metadata=INLINE)
    resources: PhaseResources
    duration_s: float
    conversation_running: bool
    persisted_in_jetstream: int  # messages the inbound stream gained during the phase


@dataclass(frozen=True)
class CapacityResult:
    """The closed-loop run: as many webhooks per second as the gateway accepts."""

    connections: int
    duration_s: float
    requests: int
    accepted: int
    statuses: dict[str, int]
    throughput_per_s: float
    exhausted: bool  # every pre-signed request was sent before the time was up
    resources: PhaseResources
    latency: Latency


# --- phase 3: end to end ------------------------------------------------------------------------


@dataclass(frozen=True)
class TurnFigures:
    """Turns as the conversation service reported them, checked against the sandbox's sends."""

    offered_rate_per_s: float
    webhooks: WebhookFigures
    turns: int
    turns_per_s: float
    turns_per_s_makespan: float
    turns_per_second_min: int
    turns_per_second_max: int
    turn_latency: Latency
    webhook_to_send_from_schedule: Latency
    webhook_to_send_from_write: Latency
    stages: dict[str, Latency]
    accounting: Accounting


@dataclass(frozen=True)
class DrainRate:
    """Sends after the last webhook was answered: egress's pace while clearing a backlog."""

    sends: int
    seconds: float | None
    per_s: float | None


@dataclass(frozen=True)
class Backlog:
    """A queue sampled during the phase."""

    max: int
    mean: float
    last: int


@dataclass(frozen=True)
class RecorderLag:
    backlog_when_settled: int
    caught_up_s_after_last_webhook: float | None  # None: not caught up before the timeout


@dataclass(frozen=True)
class EndToEndResult:
    figures: TurnFigures = field(metadata=INLINE)
    egress_while_draining: DrainRate
    backlogs_while_sending: dict[str, Backlog]
    recorder: RecorderLag | None  # None unless the run had --recorder
    contacts: int
    conversation_replicas: int
    debounce: dict[str, int]  # the tenants' debounce settings, as written in their documents
    settle_s: float
    resources: PhaseResources  # while the webhooks were sent
    drain_resources: PhaseResources  # from the last webhook until the system settled


# --- hostile webhooks ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HostileAnswer:
    """One body and its answer (status -1: no HTTP answer), for the slowest and the failures."""

    index: int
    kind: str
    bytes: int
    status: int
    ms: float
    detail: str  # the start of the answer's body, or why there was none


@dataclass(frozen=True)
class HostileFigures:
    """What the gateway answered signed hostile bodies, by status and by kind of mutation."""

    bodies: int
    bytes_sent: int
    statuses: dict[str, int]
    by_kind: dict[str, dict[str, int]]  # kind -> status -> bodies
    unexpected: dict[str, dict[str, int]]  # answers the envelope (size, owner, signature) does not explain
    server_errors: int  # answers >= 500
    unanswered: int  # no HTTP answer at all
    failures: list[HostileAnswer]
    slowest: list[HostileAnswer]
    latency: Latency
    latency_by_kind: dict[str, Latency]
    answer_counts: dict[str, int]  # the figures of the 200 answers' JSON, summed


@dataclass(frozen=True)
class PartsCheck:
    """The good messages of bodies answered 200, and those speaking for a tenant that did not sign."""

    readable: int
    readable_stored: int
    foreign: int
    foreign_stored: int
    missing_examples: list[str]
    leaked_examples: list[str]

    @property
    def ok(self) -> bool:
        return self.readable_stored == self.readable and self.foreign_stored == 0


@dataclass(frozen=True)
class CustomerReply:
    """A real customer message sent after the hostile bodies, and the bot's reply."""

    webhook_status: int
    answered: bool
    seconds: float | None  # from the webhook's answer to the reply accepted by the Graph API


@dataclass(frozen=True)
class HostileResult:
    figures: HostileFigures = field(metadata=INLINE)
    parts: PartsCheck
    customer: CustomerReply
    seed: int
    concurrency: int
    max_body_bytes: int
    duration_s: float
    bodies_per_s: float
    gateway_rss_mib_before: float
    gateway_rss_mib_after: float
    resources: PhaseResources


# --- the whole run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phases:
    """Each phase that ran; a skipped one is None."""

    raw_jetstream: RawJetStreamResult | None = None
    ingress: IngressResult | None = None
    ingress_capacity: CapacityResult | None = None
    e2e: EndToEndResult | None = None
    hostile: HostileResult | None = None

    def ran(self) -> dict[str, RawJetStreamResult | IngressResult | CapacityResult | EndToEndResult | HostileResult]:
        """The phases that ran, by name, in the order they ran."""
        return {
            phase.name: result
            for phase in dataclasses.fields(self)
            if (result := getattr(self, phase.name)) is not None
        }


@dataclass(frozen=True)
class Machine:
    date: str
    cpu: str
    cores: int | None
    memory_gib: int
    os: str
    python: str
    nats_server: str
    redis_server: str
    commit: str
    command: str


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    passed: bool | None  # None: reported for information, no target

    def as_json(self) -> dict[str, Any]:
        return {"target": self.target, "measured": self.measured, "pass": self.passed}


@dataclass(frozen=True)
class BenchReport:
    phases: Phases
    profiles: dict[str, Any]  # bench.profile.summarise() per "phase/process", with --py-spy
    meta: Machine
    config: Options
    peak_rss_mib: dict[str, float]  # per process, over the whole run
    targets: Targets
    verdicts: list[Verdict]

    @property
    def failed(self) -> bool:
        return any(verdict.passed is False for verdict in self.verdicts)

    def as_json(self) -> dict[str, Any]:
        return {
            "phases": to_json(self.phases.ran()),
            **({"profiles": self.profiles} if self.profiles else {}),
            "meta": to_json(self.meta),
            "config": to_json(self.config),
            "peak_rss_mib": self.peak_rss_mib,
            "targets": to_json(self.targets),
            "verdicts": [verdict.as_json() for verdict in self.verdicts],
        }


def to_json(value: Any) -> Any:
    """A result as JSON-ready values: dataclasses by field name, INLINE fields merged into their parent."""
    if isinstance(value, Accounting):
        return value.as_dict()
    if isinstance(value, Verdict):
        return value.as_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for item in dataclasses.fields(value):
            converted = to_json(getattr(value, item.name))
            if item.metadata.get("inline"):
                out.update(converted)
            else:
                out[item.name] = converted
        return out
    if isinstance(value, Mapping):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value
