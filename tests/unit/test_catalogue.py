"""The catalogue is the one place that names subjects, streams and Redis keys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from zapflow.platform import catalogue, keys

ROOT = Path(__file__).resolve().parents[2]
# The catalogue's own modules, and this test, which checks what the catalogue spells.
ALLOWED = {
    ROOT / "services/zapflow/platform/catalogue.py",
    ROOT / "services/zapflow/platform/keys.py",
    Path(__file__).resolve(),
}
# A string literal that starts like a subject (zf.), a Redis key (zf:) or a stream name.
LITERAL = re.compile(r"""[rbf]*["'](zf[.:]|ZF_(INBOUND|STATUS|OUTBOUND|EVENTS|DLQ|TIMERS)\b)""")


def python_sources() -> list[Path]:
    return [
        path
        for folder in ("services", "bench", "tests")
        for path in (ROOT / folder).rglob("*.py")
        if path.resolve() not in ALLOWED and not path.name.endswith("_pb2.py")
    ]


def test_no_subject_stream_or_key_is_spelled_outside_the_catalogue() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in python_sources()
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if LITERAL.search(line)
    ]
    assert found == [], "use zapflow.platform.catalogue or zapflow.platform.keys instead:\n" + "\n".join(found)


def test_the_scan_finds_a_literal() -> None:
    assert LITERAL.search('subject = f"zf.in.{tenant}.{contact}"')
    assert LITERAL.search("await redis.get('zf:acme:conv:5511')")
    assert LITERAL.search('js.stream_info("ZF_EVENTS")')
    assert not LITERAL.search('monkeypatch.setenv("ZF_TEST_TOKEN", "x")')


@pytest.mark.parametrize(
    ("subject", "tenant"),
    [
        ("zf.in.acme.5511", "acme"),
        ("zf.status.acme.5511", "acme"),
        ("zf.evt.turn.acme.5511", "acme"),
        ("zf.dlq.gateway.zf.out.acme.5511", "acme"),
        ("zf.dlq.recorder.zf.evt.sent.acme.5511", "acme"),
        ("zf.timer.reengage.acme.5511", "acme"),
        ("zf.dlq.scheduler.zf.due.reengage.acme.5511", "acme"),
    ],
)
def test_tenant_is_read_from_every_kind_of_subject(subject: str, tenant: str) -> None:
    assert catalogue.tenant_of(subject) == tenant


def test_subject_builders_match_their_streams() -> None:
    built = {
        catalogue.INBOUND: catalogue.inbound_subject("acme", "5511"),
        catalogue.STATUS: catalogue.status_subject("acme", "5511"),
        catalogue.OUTBOUND: catalogue.outbound_subject("acme", "5511"),
        catalogue.EVENTS: catalogue.turn_subject("acme", "5511"),
        catalogue.DEAD_LETTER: catalogue.dead_letter_subject("gateway", catalogue.outbound_subject("acme", "5511")),
    }
    for stream, subject in built.items():
        (wildcard,) = stream.subjects
        assert subject.startswith(wildcard.removesuffix(">")), (stream.name, subject)
    waiting, fired = catalogue.TIMER_STREAM.subjects
    assert catalogue.timer_subject("reengage", "acme", "5511").startswith(waiting.removesuffix(">"))
    assert catalogue.due_subject("reengage", "acme", "5511").startswith(fired.removesuffix(">"))


def test_every_consumer_filters_inside_its_stream_and_has_a_unique_name() -> None:
    names = [consumer.durable for consumer in catalogue.ALL_CONSUMERS]
    assert len(names) == len(set(names))
    for consumer in catalogue.ALL_CONSUMERS:
        wildcards = consumer.stream.subjects
        assert any(consumer.filter_subject.startswith(w.removesuffix(">")) for w in wildcards), consumer.durable


def test_erasure_reaches_every_contact_scoped_key_and_only_the_contacts_own() -> None:
    contact = keys.ContactKeys("acme", "5511")
    contact_kinds = [kind for kind in keys.KINDS if kind.scope == "contact"]
    assert len(contact.all()) == len(contact_kinds) >= 5
    assert all(key.startswith("zf:acme:") and key.endswith(":5511") for key in contact.all())
    assert contact.conversation in contact.all() and contact.history in contact.all()
    assert keys.ContactKeys("acme", "5512").all() != contact.all()


def test_dead_letters_of_a_contact_are_found_by_the_erasure_filters() -> None:
    filters = catalogue.contact_subjects("acme", "5511")[catalogue.DEAD_LETTER.name]
    letters = [
        catalogue.dead_letter_subject("gateway", catalogue.outbound_subject("acme", "5511")),
        catalogue.dead_letter_subject("recorder", catalogue.result_subject("acme", "5511")),
        catalogue.dead_letter_subject("scheduler", catalogue.due_subject("reengage", "acme", "5511")),
    ]
    for letter in letters:
        assert any(_matches(pattern, letter) for pattern in filters), letter
    other = catalogue.dead_letter_subject("gateway", catalogue.outbound_subject("acme", "5512"))
    assert not any(_matches(pattern, other) for pattern in filters)


def _matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: `*` is one token, `>` the rest."""
    wanted, tokens = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or token not in ("*", tokens[index]):
            return False
    return len(wanted) == len(tokens)
