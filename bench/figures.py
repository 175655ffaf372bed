"""The figures of a phase, computed from what the bench recorded: pure functions, no I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence

from bench import accounting, loadgen
from bench.results import Backlog, DispatchLag, DrainRate, Latency, TurnFigures, WebhookFigures


def per_second(times: Sequence[float], start: float, seconds: int) -> list[int]:
    """How many of `times` fall in each whole second after `start`; those outside are left out."""
    buckets = [0] * seconds
    for t in times:
        index = math.floor(t - start)
        if 0 <= index < seconds:
            buckets[index] += 1
    return buckets


def completion_rate(times: Sequence[float]) -> float:
    """Completions per second over the completion window: (n - 1) / (last - first)."""
    if len(times) < 2:
        return 0.0
    span = max(times) - min(times)
    return (len(times) - 1) / span if span > 0 else 0.0


def webhook_figures(result: loadgen.LoadResult, duration_s: float, rate: float) -> WebhookFigures:
    done_ok = [result.done[i] for i in result.ok_indexes]
    buckets = per_second(done_ok, result.t0, int(duration_s))
    # Leave out the edges, where the run ramps up and winds down.
    inner = buckets[1:-1] or buckets
    lag = sorted(result.dispatch_lag)
    return WebhookFigures(
        offered_rate_per_s=rate,
        offered=len(result.status),
        accepted=len(done_ok),
        errors=len(result.status) - len(done_ok),
        statuses=result.statuses(),
        error_kinds=dict(result.errors),
        reconnects=result.reconnects,
        throughput_per_s=round(completion_rate(done_ok), 1),
        per_second_min=min(inner) if inner else 0,
        per_second_max=max(inner) if inner else 0,
        latency_from_schedule=Latency.of(result.latencies_from_schedule()),
        service_time=Latency.of(result.service_times()),
        generator_dispatch_lag_ms=DispatchLag(
            p99=round(1000 * accounting.percentile(lag, 99), 2) if lag else None,
            max=round(1000 * lag[-1], 2) if lag else None,
        ),
    )


def turn_figures(
    result: loadgen.LoadResult,
    wamids: Sequence[str],
    turns: Sequence[accounting.TurnRecord],
    checked: accounting.Accounting,
    duration_s: float,
    rate: float,
) -> TurnFigures:
    """Turn rate and latencies; a turn's send is the one the accounting matched to it."""
    index_of = {w: i for i, w in enumerate(wamids)}
    answered = [t for t in turns if t.wamids]
    answered_at = [t.answered_at for t in answered]
    buckets = per_second(answered_at, result.wall_t0, int(duration_s))
    # Leave out the edges; turns start a debounce window after the first webhook.
    inner = buckets[2:-1] or buckets
    to_send_scheduled, to_send_written, egress, close_stage = [], [], [], []
    for turn in answered:
        close_stage.append(turn.closed_at - turn.started_at)
        send = checked.send_of_turn.get(turn.turn_id)
        i = index_of.get(turn.wamids[-1])
        if send is None or i is None:
            continue
        to_send_scheduled.append(send.timestamp - result.wall(result.scheduled[i]))
        to_send_written.append(send.timestamp - result.wall(result.sent[i]))
        egress.append(send.timestamp - turn.answered_at)
    makespan = (max(answered_at) - result.wall_t0) if answered_at else 0.0
    return TurnFigures(
        offered_rate_per_s=rate,
        webhooks=webhook_figures(result, duration_s, rate),
        turns=len(turns),
        turns_per_s=round(completion_rate(answered_at), 1),
        turns_per_s_makespan=round(len(answered) / makespan, 1) if makespan else 0.0,
        turns_per_second_min=min(inner) if inner else 0,
        turns_per_second_max=max(inner) if inner else 0,
        turn_latency=Latency.of(t.answered_at - t.closed_at for t in answered),
        webhook_to_send_from_schedule=Latency.of(to_send_scheduled),
        webhook_to_send_from_write=Latency.of(to_send_written),
        stages={
            "received_to_closed (includes the debounce window)": Latency.of(close_stage),
            "answered_to_sent (egress + Graph call)": Latency.of(egress),
        },
        accounting=checked,
    )


def drain_rate(result: loadgen.LoadResult, sends: Sequence[accounting.SendRecord]) -> DrainRate:
    """Sends after the last webhook was answered: egress's pace when it has a backlog to clear."""
    last_webhook = result.wall(max(result.done))
    late = sorted(s.timestamp for s in sends if s.timestamp > last_webhook)
    if len(late) < 2:
        return DrainRate(sends=len(late), seconds=None, per_s=None)
    return DrainRate(sends=len(late), seconds=round(late[-1] - last_webhook, 2), per_s=round(completion_rate(late), 1))


def backlogs(series: dict[str, list[int]]) -> dict[str, Backlog]:
    """Each sampled queue's maximum, mean and last value; a queue never sampled is left out."""
    return {
        name: Backlog(max=max(values), mean=round(sum(values) / len(values), 1), last=values[-1])
        for name, values in series.items()
        if values
    }
