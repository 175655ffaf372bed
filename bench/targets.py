"""The benchmark's targets, and the verdict of a run's phases against them."""

from __future__ import annotations

from dataclasses import dataclass

from bench.results import Phases, Verdict


@dataclass(frozen=True)
class Targets:
    ingress_rate: float = 1000.0
    ingress_duration_s: float = 30.0
    ingress_p99_ms: float = 50.0
    e2e_turns_per_s: float = 300.0
    e2e_p99_turn_ms: float = 100.0
    hostile_bodies: int = 10_000


TARGETS = Targets()


def evaluate(phases: Phases, targets: Targets = TARGETS) -> list[Verdict]:
    """PASS/FAIL per target for the phases that ran, then figures given for information (no verdict)."""
    verdicts = []
    if phases.ingress:
        verdicts.append(_ingress(phases, targets))
    if phases.e2e:
        verdicts.append(_end_to_end(phases, targets))
        send = phases.e2e.figures.webhook_to_send_from_schedule
        verdicts.append(
            Verdict(
                target="webhook -> reply accepted by the Graph API (information; includes the debounce window)",
                measured=f"p50 {send.p50_ms} ms, p99 {send.p99_ms} ms (window {phases.e2e.debounce['windowMs']} ms)",
                passed=None,
            )
        )
    if phases.hostile:
        verdicts.extend(_hostile(phases, targets))
    if phases.raw_jetstream and phases.raw_jetstream.throughput.publish_per_s:
        verdicts.append(_fraction_of_raw_jetstream(phases, phases.raw_jetstream.throughput.publish_per_s))
    return verdicts


def _ingress(phases: Phases, targets: Targets) -> Verdict:
    assert phases.ingress is not None
    webhooks = phases.ingress.webhooks
    p99 = webhooks.latency_from_schedule.p99_ms
    latency_ok = p99 is not None and p99 <= targets.ingress_p99_ms
    # Throughput criterion: every webhook offered at >= the target rate for the target duration
    # was answered 200 and the latency from the *scheduled* time stayed bounded, i.e. no backlog
    # built up (the completion rate of a paced run sits just around the offered rate).
    kept_up = webhooks.offered_rate_per_s >= targets.ingress_rate and webhooks.errors == 0 and latency_ok
    rate_ok = webhooks.throughput_per_s >= targets.ingress_rate or kept_up
    long_enough = phases.ingress.duration_s >= targets.ingress_duration_s
    # I1: a 200 means the message is in JetStream (the stream gained one per accepted webhook).
    persisted = phases.ingress.persisted_in_jetstream == webhooks.accepted
    return Verdict(
        target=f"ingress >= {targets.ingress_rate:,.0f} msg/s for {targets.ingress_duration_s:.0f} s, "
        f"p99 webhook <= {targets.ingress_p99_ms:.0f} ms",
        measured=f"{webhooks.throughput_per_s:.0f}/s offered {webhooks.offered_rate_per_s:.0f}/s for "
        f"{phases.ingress.duration_s:.0f} s, {webhooks.errors} errors, p99 {p99} ms (from schedule), "
        f"{phases.ingress.persisted_in_jetstream} of {webhooks.accepted} accepted in JetStream",
        passed=rate_ok and long_enough and persisted and latency_ok,
    )


def _end_to_end(phases: Phases, targets: Targets) -> Verdict:
    assert phases.e2e is not None
    figures = phases.e2e.figures
    p99 = figures.turn_latency.p99_ms
    return Verdict(
        target=f"end to end >= {targets.e2e_turns_per_s:.0f} turns/s, "
        f"p99 turn latency <= {targets.e2e_p99_turn_ms:.0f} ms, zero loss/duplicates",
        measured=f"{figures.turns_per_s:.0f} turns/s, p99 {p99} ms, lost {figures.accounting.lost}, "
        f"duplicates {figures.accounting.duplicates}",
        passed=figures.turns_per_s >= targets.e2e_turns_per_s
        and p99 is not None
        and p99 <= targets.e2e_p99_turn_ms
        and figures.accounting.ok,
    )


def _hostile(phases: Phases, targets: Targets) -> list[Verdict]:
    assert phases.hostile is not None
    figures, parts, customer = phases.hostile.figures, phases.hostile.parts, phases.hostile.customer
    unexpected = "; ".join(
        f"{kind} {', '.join(f'{status}: {count}' for status, count in statuses.items())}"
        for kind, statuses in figures.unexpected.items()
    )
    return [
        Verdict(
            target=f"hostile: >= {targets.hostile_bodies:,} signed hostile webhook bodies, no answer >= 500",
            measured=f"{figures.bodies} bodies, answers {figures.statuses}, {figures.server_errors} >= 500, "
            f"{figures.unanswered} unanswered",
            passed=figures.bodies >= targets.hostile_bodies and figures.server_errors == 0 and figures.unanswered == 0,
        ),
        Verdict(
            target="hostile: the readable messages of a body answered 200 are in JetStream, "
            "none speaking for a tenant that did not sign",
            measured=f"{parts.readable_stored} of {parts.readable} readable stored, "
            f"{parts.foreign_stored} of {parts.foreign} foreign stored",
            passed=parts.ok,
        ),
        Verdict(
            target="hostile: a real customer is answered afterwards",
            measured=f"webhook {customer.webhook_status}, "
            + (f"reply after {customer.seconds} s" if customer.answered else "no reply"),
            passed=customer.answered,
        ),
        Verdict(
            target="hostile: answers the envelope (size, owner, signature) does not explain (information)",
            measured=unexpected or "none",
            passed=None,
        ),
    ]


def _fraction_of_raw_jetstream(phases: Phases, publish_per_s: float) -> Verdict:
    fractions = {}
    if phases.ingress_capacity:
        fractions["ingress capacity"] = phases.ingress_capacity.throughput_per_s / publish_per_s
    if phases.ingress:
        fractions["ingress (paced)"] = phases.ingress.webhooks.throughput_per_s / publish_per_s
    if phases.e2e:
        fractions["end to end turns"] = phases.e2e.figures.turns_per_s / publish_per_s
    return Verdict(
        target="zapflow throughput as a fraction of raw JetStream publish rate (information)",
        measured=", ".join(f"{name} {100 * share:.1f}%" for name, share in fractions.items()),
        passed=None,
    )
