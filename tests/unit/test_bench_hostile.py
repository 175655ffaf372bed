"""The hostile-body generator (deterministic, signed as it says), its tally, verdicts and report."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from bench import render, targets
from bench.hostile import (
    DECK,
    KINDS,
    HostileBodies,
    HostileBody,
    Pairs,
    Raw,
    Sent,
    Tenant,
    answer_counts,
    encode,
    expected_answers,
    tally,
)
from bench.options import HOSTILE, LATEST, parse_options
from bench.results import (
    BenchReport,
    CustomerReply,
    HostileResult,
    Machine,
    PartsCheck,
    PhaseResources,
    Phases,
    ProcessUsage,
)
from zapflow.whatsapp.signature import SIGNATURE_HEADER, sign, signature_matches

ACME = Tenant("acme", "100000000000001", "acme-secret")
GLOBEX = Tenant("globex", "100000000000002", "globex-secret")
EPOCH = 1_764_000_000
LIMIT = 256 * 1024


def generator(seed: int = 7, tenants: tuple[Tenant, ...] = (ACME, GLOBEX)) -> HostileBodies:
    return HostileBodies(seed, tenants, EPOCH, LIMIT)


# --- the generator ------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_bodies_in_any_order() -> None:
    first = list(generator().bodies(DECK))
    again = [generator().body(index) for index in reversed(range(DECK))][::-1]
    assert first == again
    other = list(generator(seed=8).bodies(DECK))
    assert [b.body for b in other] != [b.body for b in first]


def test_every_block_holds_each_kind_in_its_share() -> None:
    for block in range(2):
        kinds = Counter(body.kind for body in generator().bodies(DECK, start=block * DECK))
        assert kinds == {name: kind.weight for name, kind in KINDS.items()}


def test_a_single_tenant_gets_mixed_bodies_instead_of_cross_tenant_ones() -> None:
    kinds = Counter(body.kind for body in generator(tenants=(ACME,)).bodies(DECK))
    assert kinds["cross_tenant"] == 0
    assert kinds["mixed"] == KINDS["mixed"].weight + KINDS["cross_tenant"].weight


def test_bodies_are_signed_as_their_kind_says() -> None:
    for body in generator().bodies(DECK):
        tenant = (ACME, GLOBEX)[body.index % 2]
        header = body.headers.get(SIGNATURE_HEADER)
        if body.kind == "unsigned":
            assert header is None
        elif body.kind == "bad_signature":
            assert not signature_matches(body.body, header, tenant.app_secret)
        else:
            assert header == sign(body.body, tenant.app_secret), body.kind


def test_only_oversized_bodies_are_over_the_limit() -> None:
    over = {body.kind for body in generator().bodies(2 * DECK) if len(body.body) > LIMIT}
    assert over == {"oversized"}
    assert all(len(body.body) > LIMIT for body in generator().bodies(2 * DECK) if body.kind == "oversized")


def test_the_good_message_of_a_mixed_body_is_documented_and_beside_a_bad_one() -> None:
    mixed = [body for body in generator().bodies(DECK) if body.kind == "mixed"]
    assert len(mixed) == KINDS["mixed"].weight
    numbers = {ACME.name: ACME.phone_number_id, GLOBEX.name: GLOBEX.phone_number_id}
    for body in mixed:
        (part,) = body.readable
        (change,) = json.loads(body.body)["entry"][0]["changes"]
        assert change["value"]["metadata"]["phone_number_id"] == numbers[part.tenant]
        messages = change["value"]["messages"]
        assert len(messages) == 2
        (good,) = [m for m in messages if m.get("id") == part.wamid]
        assert good == {"from": part.contact, "id": part.wamid, "timestamp": str(EPOCH), "type": "text",
                        "text": {"body": "hello, what are your prices?"}}  # fmt: skip


def test_a_cross_tenant_body_speaks_for_a_tenant_that_did_not_sign_it() -> None:
    for body in generator().bodies(DECK):
        if body.kind != "cross_tenant":
            continue
        (own,), (foreign,) = body.readable, body.foreign
        assert own.tenant != foreign.tenant
        numbers = [c["value"]["metadata"]["phone_number_id"] for c in json.loads(body.body)["entry"][0]["changes"]]
        by_name = {ACME.name: ACME.phone_number_id, GLOBEX.name: GLOBEX.phone_number_id}
        assert numbers == [by_name[own.tenant], by_name[foreign.tenant]]
        assert body.expected == {200, 403}


def test_expected_answers_follow_the_envelope() -> None:
    tenants = (ACME, GLOBEX)
    claims_acme = b'{"phone_number_id":"100000000000001"}'
    both = b'{"phone_number_id":"100000000000001","x":{"phone_number_id":"100000000000002"}}'
    assert expected_answers(b"x" * 11, None, tenants, 10) == {413}
    assert expected_answers(b'{"phone_number_id":"999"}', sign(b"", "s"), tenants, 1000) == {403}
    assert expected_answers(claims_acme, None, tenants, 1000) == {401}
    assert expected_answers(claims_acme, sign(claims_acme, GLOBEX.app_secret), tenants, 1000) == {403}
    assert expected_answers(claims_acme, sign(claims_acme, ACME.app_secret), tenants, 1000) == {200}
    assert expected_answers(both, sign(both, ACME.app_secret), tenants, 1000) == {200, 403}


def test_encode_writes_what_json_dumps_would_and_what_it_cannot() -> None:
    tree = {"a": [1, "é", None, {"b": True}], "c": 1.5}
    assert encode(tree) == json.dumps(tree, separators=(",", ":")).encode()
    assert encode(Pairs((("k", 1), ("k", "2")))) == b'{"k":1,"k":"2"}'
    deep = Raw(b"[" * 100_000 + b"]" * 100_000)
    assert encode({"deep": deep, "n": Raw(b"NaN")}) == b'{"deep":' + deep.text + b',"n":NaN}'


# --- what came back -----------------------------------------------------------------------------


def sent(kind: str, status: int, seconds: float, expected: frozenset[int] = frozenset({200}), index: int = 0) -> Sent:
    hostile = HostileBody(index=index, kind=kind, body=b"", headers={}, expected=expected)
    counts = Counter({"accepted.messages": 1}) if status == 200 else Counter[str]()
    return Sent(hostile, 2, status, seconds, f"answer {status}", counts)


def test_answer_counts_sum_numbers_and_count_lists() -> None:
    answer = {"accepted": {"messages": 2, "statuses": 1}, "dead_lettered": [{"where": "body"}], "ok": True}
    assert answer_counts(answer) == {"accepted.messages": 2, "accepted.statuses": 1, "dead_lettered": 1}
    assert answer_counts(["not", "an", "object"]) == {}


def test_tally_counts_by_status_and_kind_and_keeps_the_failures() -> None:
    figures = tally(
        [
            sent("mixed", 200, 0.01, index=0),
            sent("mixed", 500, 0.5, index=1),
            sent("unsigned", 401, 0.002, frozenset({401}), index=2),
            sent("truncated", 400, 0.003, index=3),
            sent("deep_nesting", -1, 2.0, index=4),
        ],
        examples=2,
    )
    assert figures.statuses == {"-1": 1, "200": 1, "400": 1, "401": 1, "500": 1}
    assert figures.by_kind["mixed"] == {"200": 1, "500": 1}
    assert figures.unexpected == {"deep_nesting": {"-1": 1}, "mixed": {"500": 1}, "truncated": {"400": 1}}
    assert (figures.server_errors, figures.unanswered) == (1, 1)
    assert [(f.kind, f.status) for f in figures.failures] == [("mixed", 500), ("deep_nesting", -1)]
    assert [s.ms for s in figures.slowest] == [2000.0, 500.0]
    assert figures.answer_counts == {"accepted.messages": 1}
    assert (figures.bodies, figures.bytes_sent) == (5, 10)
    assert figures.latency_by_kind["mixed"].max_ms == 500.0


# --- verdicts, report, options ------------------------------------------------------------------


def hostile_result(
    server_errors: int = 0, bodies: int = 10_000, answered: bool = True, stored: int = 5
) -> HostileResult:
    answers = [sent("mixed", 200, 0.01)] * (bodies - server_errors) + [
        sent("mixed", 503, 0.2, index=60)
    ] * server_errors
    usage = {"gateway": ProcessUsage(cpu_pct_of_one_core=80.0, peak_rss_mib=120.0)}
    return HostileResult(
        figures=tally(answers),
        parts=PartsCheck(5, stored, 2, 0, [], []),
        customer=CustomerReply(200, answered, 0.6 if answered else None),
        seed=1,
        concurrency=16,
        max_body_bytes=LIMIT,
        duration_s=40.0,
        bodies_per_s=250.0,
        gateway_rss_mib_before=90.0,
        gateway_rss_mib_after=101.5,
        resources=PhaseResources(wall_s=40.0, processes=usage, total_cpu_pct=80.0),
    )


def verdicts(result: HostileResult) -> list[bool | None]:
    return [verdict.passed for verdict in targets.evaluate(Phases(hostile=result))]


def test_hostile_targets_pass_only_when_nothing_failed() -> None:
    assert verdicts(hostile_result()) == [True, True, True, None]
    assert verdicts(hostile_result(server_errors=1)) == [False, True, True, None]
    assert verdicts(hostile_result(bodies=9_999)) == [False, True, True, None]
    assert verdicts(hostile_result(stored=4)) == [True, False, True, None]
    assert verdicts(hostile_result(answered=False)) == [True, True, False, None]
    (*_, unexpected) = targets.evaluate(Phases(hostile=hostile_result(server_errors=2)))
    assert unexpected.measured == "mixed 503: 2"


def test_the_report_has_a_hostile_section() -> None:
    meta = Machine("2026-12-01", "AMD EPYC", 2, 8, "Linux", "3.11.7", "v2.15.1", "6.2.14", "abc1234", "bench")
    phases = Phases(hostile=hostile_result(server_errors=1, bodies=10))
    report = BenchReport(phases, {}, meta, parse_options(["--phase", "hostile"]), {}, targets.TARGETS, [])
    lines = render.markdown(report).splitlines()
    assert "| mixed | 10 | 200: 9, 503: 1 | 503: 1 | 10.0 / 200.0 / 200.0 |" in lines
    assert "Gateway RSS 90.0 MiB before, 101.5 MiB after." in lines
    assert "A real customer afterwards: webhook 200, **answered** 0.6 s after it." in lines
    assert "| 60 | mixed | 2 | 503 | 200.0 | answer 503 |" in lines
    assert "| process | hostile CPU | hostile RSS |" in lines
    assert "## Webhooks (latency in ms)" not in lines
    written = report.as_json()["phases"]["hostile"]
    assert written["server_errors"] == 1
    assert written["customer"] == {"webhook_status": 200, "answered": True, "seconds": 0.6}


def test_the_phase_option_picks_the_phases_and_the_json_file() -> None:
    assert (parse_options([]).phase, parse_options([]).json) == ("performance", LATEST)
    hostile = parse_options(["--phase", "hostile", "--quick"])
    assert (hostile.json, hostile.hostile_bodies) == (HOSTILE, 500)
    assert parse_options(["--phase", "all", "--hostile-bodies", "20000"]).hostile_bodies == 20_000
    with pytest.raises(SystemExit):
        parse_options(["--hostile-bodies", "0"])
    with pytest.raises(SystemExit):
        parse_options(["--phase", "chaos"])
