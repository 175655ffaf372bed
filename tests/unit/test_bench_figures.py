"""The benchmark's figures, computed from what the load generator and the system recorded."""

from __future__ import annotations

import pytest

from bench import accounting, figures
from bench.accounting import SendRecord, TurnRecord
from bench.loadgen import LoadResult
from bench.results import Backlog, DrainRate, Latency

WALL_T0 = 1_000_000.0


def paced_run(statuses: list[int], rate: float = 10.0, service_s: float = 0.004, queued_s: float = 0.001) -> LoadResult:
    """A run whose request i was scheduled at i/rate, written `queued_s` later and answered `service_s` after."""
    t0 = 50.0
    scheduled = [t0 + i / rate for i in range(len(statuses))]
    sent = [at + queued_s for at in scheduled]
    return LoadResult(
        t0=t0,
        wall_t0=WALL_T0,
        scheduled=scheduled,
        sent=sent,
        done=[at + service_s for at in sent],
        status=statuses,
        dispatch_lag=[0.0002] * len(statuses),
    )


def test_per_second_counts_whole_seconds_from_the_start_and_leaves_out_the_rest() -> None:
    assert figures.per_second([10.0, 10.2, 10.99, 11.0, 12.5, 9.9, 13.0], start=10.0, seconds=3) == [3, 1, 1]


def test_completion_rate_is_over_the_completion_window() -> None:
    assert figures.completion_rate([5.0, 6.0, 7.0, 9.0]) == pytest.approx(3 / 4)
    assert figures.completion_rate([5.0]) == 0.0
    assert figures.completion_rate([5.0, 5.0]) == 0.0


def test_latency_of_seconds_in_milliseconds() -> None:
    latency = Latency.of([0.001 * v for v in range(1, 101)])
    assert (latency.count, latency.p50_ms, latency.p99_ms, latency.max_ms) == (100, 50.0, 99.0, 100.0)
    assert Latency.of([]) == Latency(0, None, None, None, None, None, None)


def test_webhook_figures_count_only_accepted_requests() -> None:
    run = paced_run([200] * 38 + [503, -1])  # 4 s at 10/s
    run.errors["connection reset"] += 1
    result = figures.webhook_figures(run, duration_s=4, rate=10.0)
    assert (result.offered, result.accepted, result.errors) == (40, 38, 2)
    assert result.statuses == {"-1": 1, "200": 38, "503": 1}
    assert result.error_kinds == {"connection reset": 1}
    assert result.throughput_per_s == 10.0
    # The inner seconds only: the last, partly empty because of the failures, is left out.
    assert (result.per_second_min, result.per_second_max) == (10, 10)
    assert result.latency_from_schedule.p50_ms == 5.0  # queued 1 ms + served 4 ms
    assert result.service_time.p99_ms == 4.0
    assert (result.generator_dispatch_lag_ms.p99, result.generator_dispatch_lag_ms.max) == (0.2, 0.2)


def test_webhook_figures_of_a_run_where_nothing_was_accepted() -> None:
    result = figures.webhook_figures(paced_run([-2, -2]), duration_s=1, rate=10.0)
    assert (result.accepted, result.throughput_per_s, result.per_second_max) == (0, 0.0, 0)
    assert result.latency_from_schedule.p99_ms is None


def test_turn_figures_time_each_turn_and_its_send() -> None:
    run = paced_run([200, 200, 200])
    wamids = ["w0", "w1", "w2"]
    scheduled = [run.wall(at) for at in run.scheduled]
    turns = [
        TurnRecord(f"t{i}", (w,), (), started_at=at, closed_at=at + 0.3, answered_at=at + 0.32)
        for i, (w, at) in enumerate(zip(wamids, scheduled, strict=True))
    ]
    sends = [SendRecord("5511", w, at + 0.35) for w, at in zip(wamids[:2], scheduled, strict=False)]
    checked = accounting.account(wamids, turns, sends)
    result = figures.turn_figures(run, wamids, turns, checked, duration_s=1, rate=10.0)
    assert result.turns == 3
    assert result.turns_per_s == pytest.approx(10.0)
    assert result.turn_latency.count == 3
    assert result.turn_latency.p99_ms == pytest.approx(20.0)
    # Only the turns that were sent have a send latency.
    assert result.webhook_to_send_from_schedule.count == 2
    assert result.webhook_to_send_from_schedule.p50_ms == pytest.approx(350.0)
    assert result.webhook_to_send_from_write.p50_ms == pytest.approx(349.0)
    assert result.stages["answered_to_sent (egress + Graph call)"].p50_ms == pytest.approx(30.0)
    assert result.stages["received_to_closed (includes the debounce window)"].p50_ms == pytest.approx(300.0)
    assert not result.accounting.ok
    assert result.accounting.turns_without_send == ["t2"]


def test_drain_rate_counts_the_sends_after_the_last_webhook() -> None:
    run = paced_run([200, 200])
    last_webhook = run.wall(max(run.done))
    sends = [SendRecord("5511", None, last_webhook + offset) for offset in (-0.5, 0.5, 1.0, 1.5)]
    assert figures.drain_rate(run, sends) == DrainRate(sends=3, seconds=1.5, per_s=2.0)
    assert figures.drain_rate(run, sends[:2]) == DrainRate(sends=1, seconds=None, per_s=None)


def test_backlogs_summarise_each_sampled_queue() -> None:
    summary = figures.backlogs({"outbound_pending": [4, 10, 1], "recorder_pending": []})
    assert summary == {"outbound_pending": Backlog(max=10, mean=5.0, last=1)}
