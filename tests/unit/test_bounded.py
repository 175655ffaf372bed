"""JSON read with limits: hostile bodies end in PayloadError, never in a crash or a huge allocation."""

from __future__ import annotations

import json

import pytest

from tests.support import meta
from zapflow.whatsapp.bounded import JsonLimits, PayloadError, load_bounded

LIMITS = JsonLimits(max_depth=32, max_items=100, max_string_chars=1_000, max_values=2_000)


def test_a_documented_payload_reads_within_the_default_limits() -> None:
    payload = meta.notification("1", messages=list(meta.every_inbound_type("5511999990001").values()))
    assert load_bounded(json.dumps(payload).encode(), JsonLimits()) == payload


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "more than 2000 values"),
        (b"[" * 150 + b"]" * 150, "nest deeper than 32 levels"),
        (b'{"a":' * 33 + b"1" + b"}" * 33, "nest deeper than 32 levels"),
        (b"[" * 500 + b"]" * 500, "nest deeper than 32 levels"),
        (json.dumps([1] * 101).encode(), "more than 100 items"),
        (json.dumps({str(i): 1 for i in range(101)}).encode(), "more than 100 items"),
        (json.dumps(["x" * 1_001]).encode(), "longer than 1000 characters"),
        (json.dumps({"k" * 1_001: 1}).encode(), "longer than 1000 characters"),
        (b"", "not JSON"),
        (b'{"a": 1', "not JSON"),
        (b'{"a": NaN}', "not JSON"),
        (b'"\\ud800"', "not JSON"),
        (b'{"a": "\xff"}', "not JSON"),
        (b"1" * 5_000, "not JSON"),
    ],
)
def test_hostile_bodies_are_refused_with_the_limit_they_break(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        load_bounded(body, LIMITS)


def test_nesting_at_the_limit_is_read() -> None:
    assert load_bounded(b"[" * 32 + b"]" * 32, LIMITS) is not None
