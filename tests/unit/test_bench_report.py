"""The benchmark's verdicts, its markdown report and the layout of its JSON file."""

from __future__ import annotations

import dataclasses
import json

from bench import accounting, render, targets
from bench.accounting import SendRecord, TurnRecord
from bench.options import parse_options
from bench.results import (
    Backlog,
    BenchReport,
    CapacityResult,
    DispatchLag,
    DrainRate,
    EndToEndResult,
    IngressResult,
    JetStreamThroughput,
    Latency,
    Machine,
    PhaseResources,
    Phases,
    ProcessUsage,
    RawJetStreamResult,
    RecorderLag,
    TurnFigures,
    WebhookFigures,
)

INGRESS_TARGET = "ingress >= 1,000 msg/s for 30 s, p99 webhook <= 50 ms"
E2E_TARGET = "end to end >= 300 turns/s, p99 turn latency <= 100 ms, zero loss/duplicates"


def latency(p99: float = 3.0) -> Latency:
    return Latency(count=100, mean_ms=1.0, p50_ms=0.8, p90_ms=1.2, p99_ms=p99, p999_ms=p99, max_ms=p99)


def resources(*processes: str, cpu: float = 50.0) -> PhaseResources:
    usage = {name: ProcessUsage(cpu_pct_of_one_core=cpu, peak_rss_mib=90.0) for name in processes}
    return PhaseResources(wall_s=5.0, processes=usage, total_cpu_pct=cpu * len(processes))


def webhooks(rate: float = 1000.0, throughput: float = 1000.2, errors: int = 0, p99: float = 3.0) -> WebhookFigures:
    return WebhookFigures(
        offered_rate_per_s=rate,
        offered=30_000,
        accepted=30_000 - errors,
        errors=errors,
        statuses={"200": 30_000 - errors},
        error_kinds={},
        reconnects=0,
        throughput_per_s=throughput,
        per_second_min=999,
        per_second_max=1002,
        latency_from_schedule=latency(p99),
        service_time=latency(2.5),
        generator_dispatch_lag_ms=DispatchLag(p99=1.2, max=4.1),
    )


def ingress(
    duration_s: float = 30.0,
    lost_in_jetstream: int = 0,
    rate: float = 1000.0,
    throughput: float = 1000.2,
    errors: int = 0,
    p99: float = 3.0,
) -> IngressResult:
    measured = webhooks(rate, throughput, errors, p99)
    return IngressResult(
        webhooks=measured,
        resources=resources("gateway", "nats"),
        duration_s=duration_s,
        conversation_running=False,
        persisted_in_jetstream=measured.accepted - lost_in_jetstream,
    )


def raw() -> RawJetStreamResult:
    throughput = JetStreamThroughput(
        messages=50_000,
        payload_bytes=276,
        publish_failed=0,
        publish_duplicates=0,
        publish_per_s=35_000.0,
        consumed=50_000,
        consume_ack_per_s=30_000.0,
    )
    return RawJetStreamResult(throughput=throughput, resources=resources("nats", "redis"))


def capacity() -> CapacityResult:
    return CapacityResult(
        connections=64,
        duration_s=10.07,
        requests=22_441,
        accepted=22_441,
        statuses={"200": 22_441},
        throughput_per_s=2229.0,
        exhausted=False,
        resources=resources("gateway"),
        latency=latency(95.8),
    )


def e2e(
    turns_per_s: float = 350.0, p99: float = 64.3, lose_one: bool = False, recorder: bool = False
) -> EndToEndResult:
    turns = [TurnRecord("t1", ("w1",), (), 10.0, 10.3, 10.32)]
    checked = accounting.account(["w1", "w2"] if lose_one else ["w1"], turns, [SendRecord("5511", "w1", 10.4)])
    figures = TurnFigures(
        offered_rate_per_s=350.0,
        webhooks=webhooks(rate=350.0, throughput=349.9),
        turns=10_500,
        turns_per_s=turns_per_s,
        turns_per_s_makespan=346.0,
        turns_per_second_min=245,
        turns_per_second_max=415,
        turn_latency=latency(p99),
        webhook_to_send_from_schedule=latency(736.1),
        webhook_to_send_from_write=latency(735.0),
        stages={"answered_to_sent (egress + Graph call)": latency(40.0)},
        accounting=checked,
    )
    return EndToEndResult(
        figures=figures,
        egress_while_draining=DrainRate(sends=164, seconds=0.35, per_s=469.7),
        backlogs_while_sending={"outbound_pending": Backlog(max=40, mean=12.5, last=0)},
        recorder=RecorderLag(backlog_when_settled=120, caught_up_s_after_last_webhook=2.5) if recorder else None,
        contacts=1400,
        conversation_replicas=1,
        debounce={"windowMs": 300, "maxWaitMs": 1000},
        settle_s=1.5,
        resources=resources("gateway", "conversation-0", cpu=60.0),
        drain_resources=resources("gateway", "conversation-0", "sandbox", cpu=30.0),
    )


def report(phases: Phases, profiles: dict[str, object] | None = None) -> BenchReport:
    meta = Machine(
        date="2026-11-29 17:31 UTC",
        cpu="AMD EPYC",
        cores=2,
        memory_gib=24,
        os="Linux 6.18",
        python="3.11.7",
        nats_server="v2.15.1",
        redis_server="6.2.14",
        commit="a1e7e60",
        command="uv run python bench/run.py ",
    )
    return BenchReport(
        phases=phases,
        profiles=dict(profiles or {}),
        meta=meta,
        config=parse_options([]),
        peak_rss_mib={"nats": 95.2},
        targets=targets.TARGETS,
        verdicts=targets.evaluate(phases),
    )


def full_phases(**changes: object) -> Phases:
    phases = Phases(raw_jetstream=raw(), ingress=ingress(), ingress_capacity=capacity(), e2e=e2e())
    return dataclasses.replace(phases, **changes)


def verdict_of(phases: Phases, target: str) -> bool | None:
    (verdict,) = [v for v in targets.evaluate(phases) if v.target == target]
    return verdict.passed


# --- targets ------------------------------------------------------------------------------------


def test_a_run_meeting_every_target_passes() -> None:
    verdicts = targets.evaluate(full_phases())
    assert [v.passed for v in verdicts] == [True, True, None, None]
    assert not report(full_phases()).failed


def test_ingress_fails_on_each_of_its_conditions() -> None:
    assert verdict_of(full_phases(ingress=ingress(p99=50.1)), INGRESS_TARGET) is False
    assert verdict_of(full_phases(ingress=ingress(duration_s=29.0)), INGRESS_TARGET) is False
    assert verdict_of(full_phases(ingress=ingress(lost_in_jetstream=1)), INGRESS_TARGET) is False
    assert verdict_of(full_phases(ingress=ingress(rate=900.0, throughput=900.0)), INGRESS_TARGET) is False
    assert report(full_phases(ingress=ingress(p99=50.1))).failed


def test_a_paced_run_that_kept_up_meets_the_rate_just_below_it() -> None:
    # Every webhook offered at 1,000/s answered without a backlog: the completion rate may read 999.7.
    assert verdict_of(full_phases(ingress=ingress(throughput=999.7)), INGRESS_TARGET) is True
    # With errors, the completion rate itself must reach the target.
    assert verdict_of(full_phases(ingress=ingress(throughput=999.7, errors=3)), INGRESS_TARGET) is False


def test_end_to_end_fails_on_rate_latency_or_accounting() -> None:
    assert verdict_of(full_phases(e2e=e2e(turns_per_s=299.0)), E2E_TARGET) is False
    assert verdict_of(full_phases(e2e=e2e(p99=100.5)), E2E_TARGET) is False
    assert verdict_of(full_phases(e2e=e2e(lose_one=True)), E2E_TARGET) is False


def test_information_gives_fractions_of_the_raw_publish_rate() -> None:
    *_, fractions = targets.evaluate(full_phases())
    assert fractions.passed is None
    assert fractions.measured == "ingress capacity 6.4%, ingress (paced) 2.9%, end to end turns 1.0%"


def test_phases_that_did_not_run_get_no_verdict() -> None:
    assert targets.evaluate(Phases()) == []
    only_ingress = targets.evaluate(Phases(ingress=ingress()))
    assert [v.target for v in only_ingress] == [INGRESS_TARGET]


# --- the markdown report ------------------------------------------------------------------------


def test_markdown_gives_each_target_its_result() -> None:
    text = render.markdown(report(full_phases(e2e=e2e(p99=120.0))))
    lines = text.splitlines()
    assert lines[0] == "# zapflow benchmark — 2026-11-29 17:31 UTC"
    assert any(line.startswith(f"| {INGRESS_TARGET} | 1000/s offered 1000/s for 30 s") for line in lines)
    assert f"| {INGRESS_TARGET} | " in text
    (e2e_row,) = [line for line in lines if line.startswith(f"| {E2E_TARGET} |")]
    assert e2e_row.endswith("| **FAIL** |")
    (ingress_row,) = [line for line in lines if line.startswith(f"| {INGRESS_TARGET} |")]
    assert ingress_row.endswith("| **PASS** |")
    assert sum(line.endswith("| — |") for line in lines) == 2


def test_markdown_tables_of_each_phase() -> None:
    lines = render.markdown(report(full_phases())).splitlines()
    assert "| 50000 | 276 B | 35000/s | 30000/s |" in lines
    assert "| ingress | 1000 | 30000 | 0 | 1000 | 999..1002 | 0.8 | 1.2 | 3.0 | 3.0 | 2.5 | 1.2 |" in lines
    assert "| e2e | 350 | 30000 | 0 | 350 | 999..1002 | 0.8 | 1.2 | 3.0 | 3.0 | 2.5 | 1.2 |" in lines
    assert any(
        line.startswith("Ingress capacity (closed loop, 64 connections, 10.07 s): **2229 webhooks/s**")
        for line in lines
    )
    assert "| turn latency (debounce close → outbound publish) | 100 | 0.8 | 1.2 | 64.3 | 64.3 |" in lines
    assert "| stage: answered_to_sent (egress + Graph call) | 100 | 0.8 | 1.2 | 40.0 | 40.0 |" in lines
    assert (
        "Turns: 10500 answered, **350 turns/s** (245..415 per second; 346/s over the makespan), settled 1.5 s "
        "after the last webhook (egress sent 164 backlogged replies at 469.7/s meanwhile)."
    ) in lines
    assert "Backlogs while sending (max / mean of 0.5 s samples): outbound_pending 40 / 12.5." in lines
    assert (
        "Accounting: accepted 1, turns 1, sends 1, lost 0, duplicates 0, messages per turn {'1': 1} → **OK**."
    ) in lines
    assert not any(line.startswith("Recorder:") for line in lines)


def test_markdown_resources_have_a_column_pair_per_phase_that_ran() -> None:
    lines = render.markdown(report(full_phases(ingress_capacity=None))).splitlines()
    assert (
        "| process | raw_jetstream CPU | raw_jetstream RSS | ingress CPU | ingress RSS | e2e CPU | e2e RSS |" in lines
    )
    assert "| gateway | – | – | 50.0% | 90.0 | 60.0% | 90.0 |" in lines
    assert "| redis | 50.0% | 90.0 | – | – | – | – |" in lines
    assert "| **total** | 100.0% |  | 100.0% |  | 120.0% | " in lines
    assert not any(line.startswith("Ingress capacity") for line in lines)
    (drain,) = [line for line in lines if line.startswith("e2e drain")]
    assert drain.endswith("total 90.0% (gateway 30.0%, conversation-0 30.0%, sandbox 30.0%).")


def test_markdown_recorder_and_profiles_when_present() -> None:
    profiles = {
        "e2e/gateway": {"samples": 1200, "self": [{"frame": "post (httpx)", "pct": 46.0}], "inclusive": []},
        "e2e/sandbox": {"error": "no output"},
    }
    lines = render.markdown(report(full_phases(e2e=e2e(recorder=True)), profiles)).splitlines()
    assert (
        "Recorder: 120 events not yet written when the turns settled; caught up 2.5 s after the last webhook."
    ) in lines
    assert "- **e2e/gateway** (1200 samples) self: post (httpx) 46.0%" in lines
    assert "- e2e/sandbox: no output" in lines


# --- the JSON file ------------------------------------------------------------------------------

# The layout of the runs recorded in bench/results/ (e.g. latest.json at a1e7e60).
WEBHOOK_KEYS = [
    "offered_rate_per_s", "offered", "accepted", "errors", "statuses", "error_kinds", "reconnects",
    "throughput_per_s", "per_second_min", "per_second_max", "latency_from_schedule", "service_time",
    "generator_dispatch_lag_ms",
]  # fmt: skip
LAYOUT = {
    "raw_jetstream": [
        "messages", "payload_bytes", "publish_failed", "publish_duplicates", "publish_per_s", "consumed",
        "consume_ack_per_s", "resources",
    ],
    "ingress": [*WEBHOOK_KEYS, "resources", "duration_s", "conversation_running", "persisted_in_jetstream"],
    "ingress_capacity": [
        "connections", "duration_s", "requests", "accepted", "statuses", "throughput_per_s", "exhausted", "resources",
        "latency",
    ],
    "e2e": [
        "offered_rate_per_s", "webhooks", "turns", "turns_per_s", "turns_per_s_makespan", "turns_per_second_min",
        "turns_per_second_max", "turn_latency", "webhook_to_send_from_schedule", "webhook_to_send_from_write",
        "stages", "accounting", "egress_while_draining", "backlogs_while_sending", "recorder", "contacts",
        "conversation_replicas", "debounce", "settle_s", "resources", "drain_resources",
    ],
}  # fmt: skip


def test_json_keeps_the_recorded_layout() -> None:
    written = json.loads(json.dumps(report(full_phases()).as_json()))
    assert list(written) == ["phases", "meta", "config", "peak_rss_mib", "targets", "verdicts"]
    assert {name: list(phase) for name, phase in written["phases"].items()} == LAYOUT
    e2e_phase = written["phases"]["e2e"]
    assert list(e2e_phase["webhooks"]) == WEBHOOK_KEYS
    assert list(e2e_phase["turn_latency"]) == ["count", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"]
    assert e2e_phase["accounting"]["ok"] is True
    assert e2e_phase["accounting"]["messages_per_turn"] == {"1": 1}
    assert e2e_phase["recorder"] is None
    assert e2e_phase["resources"]["processes"]["gateway"] == {"cpu_pct_of_one_core": 60.0, "peak_rss_mib": 90.0}
    assert written["phases"]["ingress"]["generator_dispatch_lag_ms"] == {"p99": 1.2, "max": 4.1}
    assert written["verdicts"][0] == {
        "target": INGRESS_TARGET,
        "measured": "1000/s offered 1000/s for 30 s, 0 errors, p99 3.0 ms (from schedule), "
        "30000 of 30000 accepted in JetStream",
        "pass": True,
    }
    assert written["targets"]["ingress_p99_ms"] == 50.0
    assert written["config"]["json"].endswith("bench/results/latest.json")
    assert written["config"]["quick"] is False


def test_json_leaves_out_what_did_not_run() -> None:
    written = report(Phases(raw_jetstream=raw(), ingress=ingress())).as_json()
    assert list(written["phases"]) == ["raw_jetstream", "ingress"]
    assert "profiles" not in written
    profiled = report(full_phases(), {"e2e/gateway": {"error": "no output"}}).as_json()
    assert profiled["profiles"] == {"e2e/gateway": {"error": "no output"}}
    assert list(profiled)[:2] == ["phases", "profiles"]
