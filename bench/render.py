"""The markdown report of a run: PASS/FAIL per target, then the figures of each phase."""

from __future__ import annotations

from bench.results import BenchReport, HostileAnswer, Latency, Phases, WebhookFigures


def _fmt(value: object) -> str:
    return "–" if value is None else str(value)


def markdown(report: BenchReport) -> str:
    meta = report.meta
    lines = [
        f"# zapflow benchmark — {meta.date}",
        "",
        f"Machine: {meta.cpu} ({meta.cores} cores), {meta.memory_gib} GiB, {meta.os}; "
        f"Python {meta.python}, nats-server {meta.nats_server}, redis {meta.redis_server}; "
        f"commit {meta.commit}.",
        f"Command: `{meta.command}`",
        "",
        "## Targets",
        "",
        "| target | measured | result |",
        "|---|---|---|",
    ]
    for verdict in report.verdicts:
        result = "—" if verdict.passed is None else ("**PASS**" if verdict.passed else "**FAIL**")
        lines.append(f"| {verdict.target} | {verdict.measured} | {result} |")
    phases = report.phases
    lines += _raw_jetstream(phases)
    lines += _webhooks(phases)
    lines += _capacity(phases)
    lines += _end_to_end(phases)
    lines += _hostile(phases)
    lines += _resources(phases)
    lines += _profiles(report)
    return "\n".join(lines) + "\n"


def _raw_jetstream(phases: Phases) -> list[str]:
    if not phases.raw_jetstream:
        return []
    raw = phases.raw_jetstream.throughput
    return [
        "",
        "## Raw JetStream (Python, same machine)",
        "",
        "| messages | payload | async publish (Nats-Msg-Id) | pull consume + ack |",
        "|---|---|---|---|",
        f"| {raw.messages} | {raw.payload_bytes} B | {raw.publish_per_s:.0f}/s | {raw.consume_ack_per_s:.0f}/s |",
    ]


def _webhooks(phases: Phases) -> list[str]:
    runs: list[tuple[str, WebhookFigures]] = []
    if phases.ingress:
        runs.append(("ingress", phases.ingress.webhooks))
    if phases.e2e:
        runs.append(("e2e", phases.e2e.figures.webhooks))
    if not runs:
        return []
    lines = [
        "",
        "## Webhooks (latency in ms)",
        "",
        "| phase | offered/s | accepted | errors | achieved/s | min..max per s | p50 | p90 | p99 | max | "
        "p99 service time | generator lag p99 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, figures in runs:
        latency = figures.latency_from_schedule
        lines.append(
            f"| {name} | {figures.offered_rate_per_s:.0f} | {figures.accepted} | {figures.errors} | "
            f"{figures.throughput_per_s:.0f} | {figures.per_second_min}..{figures.per_second_max} | "
            f"{_fmt(latency.p50_ms)} | {_fmt(latency.p90_ms)} | {_fmt(latency.p99_ms)} | {_fmt(latency.max_ms)} | "
            f"{_fmt(figures.service_time.p99_ms)} | {_fmt(figures.generator_dispatch_lag_ms.p99)} |"
        )
    return lines


def _capacity(phases: Phases) -> list[str]:
    capacity = phases.ingress_capacity
    if not capacity:
        return []
    latency = capacity.latency
    return [
        "",
        f"Ingress capacity (closed loop, {capacity.connections} connections, {capacity.duration_s} s): "
        f"**{capacity.throughput_per_s:.0f} webhooks/s**, p50 {latency.p50_ms} ms, p99 {latency.p99_ms} ms, "
        f"statuses {capacity.statuses}.",
    ]


def _end_to_end(phases: Phases) -> list[str]:
    e2e = phases.e2e
    if not e2e:
        return []
    figures, checked, drain = e2e.figures, e2e.figures.accounting, e2e.egress_while_draining
    lines = [
        "",
        f"## End to end ({e2e.conversation_replicas} conversation replica(s), {e2e.contacts} contacts, "
        f"debounce {e2e.debounce['windowMs']} ms / max {e2e.debounce['maxWaitMs']} ms)",
        "",
        "| measure | count | p50 | p90 | p99 | max |",
        "|---|---|---|---|---|---|",
    ]
    rows: list[tuple[str, Latency]] = [
        ("turn latency (debounce close → outbound publish)", figures.turn_latency),
        ("webhook → sandbox send (from schedule)", figures.webhook_to_send_from_schedule),
        ("webhook → sandbox send (from write)", figures.webhook_to_send_from_write),
        *((f"stage: {stage}", latency) for stage, latency in figures.stages.items()),
    ]
    for label, latency in rows:
        lines.append(
            f"| {label} | {latency.count} | {_fmt(latency.p50_ms)} | {_fmt(latency.p90_ms)} | "
            f"{_fmt(latency.p99_ms)} | {_fmt(latency.max_ms)} |"
        )
    draining = f" (egress sent {drain.sends} backlogged replies at {drain.per_s}/s meanwhile)." if drain.per_s else "."
    lines += [
        "",
        f"Turns: {figures.turns} answered, **{figures.turns_per_s:.0f} turns/s** "
        f"({figures.turns_per_second_min}..{figures.turns_per_second_max} per second; "
        f"{figures.turns_per_s_makespan:.0f}/s over the makespan), "
        f"settled {e2e.settle_s} s after the last webhook" + draining,
        "Backlogs while sending (max / mean of 0.5 s samples): "
        + ", ".join(f"{name} {backlog.max} / {backlog.mean}" for name, backlog in e2e.backlogs_while_sending.items())
        + ".",
    ]
    if e2e.recorder:
        lines.append(
            f"Recorder: {e2e.recorder.backlog_when_settled} events not yet written when the turns settled; "
            f"caught up {_fmt(e2e.recorder.caught_up_s_after_last_webhook)} s after the last webhook."
        )
    lines.append(
        f"Accounting: accepted {checked.accepted}, turns {checked.turns}, sends {checked.sends}, "
        f"lost {checked.lost}, duplicates {checked.duplicates}, "
        f"messages per turn {checked.as_dict()['messages_per_turn']} → **{'OK' if checked.ok else 'FAILED'}**."
    )
    return lines


def _hostile(phases: Phases) -> list[str]:
    hostile = phases.hostile
    if not hostile:
        return []
    figures, parts, customer, latency = hostile.figures, hostile.parts, hostile.customer, hostile.figures.latency
    lines = [
        "",
        f"## Hostile webhooks (seed {hostile.seed}, {figures.bodies} bodies, {figures.bytes_sent / 2**20:.1f} MiB, "
        f"{hostile.concurrency} at a time, limit {hostile.max_body_bytes} bytes)",
        "",
        f"Answers {figures.statuses} in {hostile.duration_s} s ({hostile.bodies_per_s}/s); answer time p50 "
        f"{_fmt(latency.p50_ms)} ms, p99 {_fmt(latency.p99_ms)} ms, max {_fmt(latency.max_ms)} ms.",
        "",
        "| kind | bodies | answers | not explained by the envelope | answer ms p50 / p99 / max |",
        "|---|---|---|---|---|",
    ]
    for kind, statuses in figures.by_kind.items():
        unexpected = _statuses(figures.unexpected.get(kind, {})) or "–"
        took = figures.latency_by_kind[kind]
        lines.append(
            f"| {kind} | {sum(statuses.values())} | {_statuses(statuses)} | {unexpected} | "
            f"{_fmt(took.p50_ms)} / {_fmt(took.p99_ms)} / {_fmt(took.max_ms)} |"
        )
    counts = ", ".join(f"{name} {count}" for name, count in figures.answer_counts.items()) or "none"
    lines += [
        "",
        f"The 200 answers' figures, summed: {counts}.",
        f"Readable messages of bodies answered 200 in JetStream: {parts.readable_stored} of {parts.readable}"
        + (f" (missing e.g. {', '.join(parts.missing_examples)})" if parts.missing_examples else "")
        + f"; messages for a tenant that did not sign stored: {parts.foreign_stored} of {parts.foreign}"
        + (f" (e.g. {', '.join(parts.leaked_examples)})" if parts.leaked_examples else "")
        + ".",
        f"Gateway RSS {hostile.gateway_rss_mib_before} MiB before, {hostile.gateway_rss_mib_after} MiB after.",
        f"A real customer afterwards: webhook {customer.webhook_status}, "
        + (f"**answered** {customer.seconds} s after it." if customer.answered else "**not answered**."),
    ]
    lines += _answers("Slowest answers", figures.slowest)
    lines += _answers("Answers >= 500 or none", figures.failures)
    return lines


def _statuses(statuses: dict[str, int]) -> str:
    return ", ".join(f"{status}: {count}" for status, count in statuses.items())


def _answers(title: str, answers: list[HostileAnswer]) -> list[str]:
    if not answers:
        return ["", f"{title}: none."]
    lines = ["", f"{title}:", "", "| body | kind | bytes | status | ms | answer |", "|---|---|---|---|---|---|"]
    for answer in answers:
        detail = answer.detail.replace("|", "\\|").replace("\n", " ")[:120]
        lines.append(f"| {answer.index} | {answer.kind} | {answer.bytes} | {answer.status} | {answer.ms} | {detail} |")
    return lines


def _resources(phases: Phases) -> list[str]:
    lines = ["", "## Resources (CPU: % of one core, averaged over the phase; peak RSS in MiB)", ""]
    by_phase = {name: result.resources for name, result in phases.ran().items()}
    processes = sorted({name for resources in by_phase.values() for name in resources.processes})
    lines.append("| process | " + " | ".join(f"{phase} CPU | {phase} RSS" for phase in by_phase) + " |")
    lines.append("|---|" + "---|---|" * len(by_phase))
    for process in processes:
        cells = []
        for resources in by_phase.values():
            usage = resources.processes.get(process)
            cells += [f"{usage.cpu_pct_of_one_core}%", f"{usage.peak_rss_mib}"] if usage else ["–", "–"]
        lines.append(f"| {process} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(f"{resources.total_cpu_pct}% | " for resources in by_phase.values()))
    if phases.e2e:
        drain = phases.e2e.drain_resources
        busiest = sorted(drain.processes.items(), key=lambda item: -item[1].cpu_pct_of_one_core)[:3]
        lines += [
            "",
            f"e2e drain (after the last webhook until settled, {drain.wall_s} s, the bench's accounting reads "
            f"included): total {drain.total_cpu_pct}% "
            f"({', '.join(f'{name} {usage.cpu_pct_of_one_core}%' for name, usage in busiest)}).",
        ]
    return lines


def _profiles(report: BenchReport) -> list[str]:
    if not report.profiles:
        return []
    lines = ["", "## Profiles (py-spy, share of non-idle samples)", ""]
    for key, summary in report.profiles.items():
        if "error" in summary:
            lines.append(f"- {key}: {summary['error']}")
            continue
        top = "; ".join(f"{frame['frame']} {frame['pct']}%" for frame in summary["self"][:6])
        lines.append(f"- **{key}** ({summary['samples']} samples) self: {top}")
    return lines
