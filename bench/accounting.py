"""Pure bookkeeping for the benchmark: percentiles, latency summaries and turn accounting.

Kept free of I/O so that tests/unit/test_bench_accounting.py can check it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (p in 0..100); NaN when empty.

    Nearest rank never invents a value between two samples: p99 of 30,000 samples is the
    29,700th smallest, a latency some request really had.
    """
    if not sorted_values:
        return math.nan
    if p <= 0:
        return sorted_values[0]
    rank = math.ceil(p / 100 * len(sorted_values))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarise(seconds: Iterable[float]) -> dict[str, float | int | None]:
    """count, mean, p50, p90, p99, p99.9 and max, in milliseconds (None when there is no sample)."""
    values = sorted(seconds)
    if not values:
        return {"count": 0, "mean_ms": None, "p50_ms": None, "p90_ms": None, "p99_ms": None, "p999_ms": None,
                "max_ms": None}  # fmt: skip

    def ms(value: float) -> float:
        return round(value * 1000, 2)

    return {
        "count": len(values),
        "mean_ms": ms(sum(values) / len(values)),
        "p50_ms": ms(percentile(values, 50)),
        "p90_ms": ms(percentile(values, 90)),
        "p99_ms": ms(percentile(values, 99)),
        "p999_ms": ms(percentile(values, 99.9)),
        "max_ms": ms(values[-1]),
    }


@dataclass(frozen=True)
class TurnRecord:
    """What the bench needs of a `Turn` event (times are epoch seconds)."""

    turn_id: str
    wamids: tuple[str, ...]
    duplicate_wamids: tuple[str, ...]
    started_at: float  # the first message's received_at (gateway clock)
    closed_at: float  # the debounce closed the turn
    answered_at: float  # its outbound commands were published


@dataclass(frozen=True)
class SendRecord:
    """One message the sandbox (the Graph API) accepted."""

    to: str
    quoted_wamid: str | None  # payload.context.message_id: the turn's last wamid
    timestamp: float


@dataclass
class Accounting:
    """Loss and duplicate checks: every wamid in exactly one turn, every turn sent exactly once."""

    accepted: int = 0
    turns: int = 0
    sends: int = 0
    missing: list[str] = field(default_factory=list)  # accepted by the webhook, in no turn
    in_several_turns: list[str] = field(default_factory=list)
    unknown_in_turns: list[str] = field(default_factory=list)  # in a turn, never sent by the bench
    dropped_as_duplicate: list[str] = field(default_factory=list)
    turns_without_send: list[str] = field(default_factory=list)
    turns_sent_twice: list[str] = field(default_factory=list)
    unexplained_sends: int = 0  # a send quoting no turn's last wamid
    messages_per_turn: dict[int, int] = field(default_factory=dict)
    # turn id -> its one send (for latency), filled when it exists
    send_of_turn: dict[str, SendRecord] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return len(self.missing)

    @property
    def duplicates(self) -> int:
        return len(self.in_several_turns) + len(self.turns_sent_twice) + self.unexplained_sends

    @property
    def ok(self) -> bool:
        return not (
            self.missing
            or self.in_several_turns
            or self.unknown_in_turns
            or self.dropped_as_duplicate
            or self.turns_without_send
            or self.turns_sent_twice
            or self.unexplained_sends
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "accepted_messages": self.accepted,
            "turns": self.turns,
            "sends": self.sends,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "missing_wamids": len(self.missing),
            "wamids_in_several_turns": len(self.in_several_turns),
            "unknown_wamids_in_turns": len(self.unknown_in_turns),
            "wamids_dropped_as_duplicate": len(self.dropped_as_duplicate),
            "turns_without_send": len(self.turns_without_send),
            "turns_sent_twice": len(self.turns_sent_twice),
            "unexplained_sends": self.unexplained_sends,
            "messages_per_turn": {str(k): v for k, v in sorted(self.messages_per_turn.items())},
            "examples": {
                "missing": self.missing[:5],
                "in_several_turns": self.in_several_turns[:5],
                "turns_without_send": self.turns_without_send[:5],
                "turns_sent_twice": self.turns_sent_twice[:5],
            },
        }


def account(
    accepted: Iterable[str],
    turns: Sequence[TurnRecord],
    sends: Sequence[SendRecord],
    maybe_stored: Iterable[str] = (),
) -> Accounting:
    """Check the bench's own records against the system's.

    `accepted`: wamids whose webhook was answered 200 (they must each be in exactly one turn).
    `maybe_stored`: wamids whose webhook failed or timed out: JetStream may still hold them, so
    finding them in a turn is not an error, but not finding them is not a loss either.
    """
    accepted_set = set(accepted)
    maybe = set(maybe_stored)
    result = Accounting(accepted=len(accepted_set), turns=len(turns), sends=len(sends))
    in_turns: Counter[str] = Counter(w for t in turns for w in t.wamids)
    result.missing = sorted(accepted_set - in_turns.keys())
    result.in_several_turns = sorted(w for w, n in in_turns.items() if n > 1)
    result.unknown_in_turns = sorted(in_turns.keys() - accepted_set - maybe)
    result.dropped_as_duplicate = sorted({w for t in turns for w in t.duplicate_wamids})
    result.messages_per_turn = dict(Counter(len(t.wamids) for t in turns))

    last_wamid = {t.wamids[-1]: t for t in turns if t.wamids}
    sends_per_turn: Counter[str] = Counter()
    for send in sends:
        turn = last_wamid.get(send.quoted_wamid or "")
        if turn is None:
            result.unexplained_sends += 1
            continue
        sends_per_turn[turn.turn_id] += 1
        result.send_of_turn.setdefault(turn.turn_id, send)
    answerable = [t for t in turns if t.wamids]
    result.turns_without_send = sorted(t.turn_id for t in answerable if sends_per_turn[t.turn_id] == 0)
    result.turns_sent_twice = sorted(turn_id for turn_id, n in sends_per_turn.items() if n > 1)
    return result
