"""Properties of webhook parsing over generated and mutated payloads (hypothesis).

Whatever the body: reading it ends in events or in refused parts with a reason, never in another
exception; every event can become a valid subject and a protobuf; and no message is lost between
the two (each one in the body is either an event or a refused part).
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.support import meta
from zapflow.platform import catalogue
from zapflow.whatsapp.bounded import JsonLimits, PayloadError, load_bounded
from zapflow.whatsapp.webhook import ParsedWebhook, parse_webhook

SENDER = "5511999990001"
# A subject token: no separators, wildcards or whitespace.
SUBJECT = re.compile(r"^[^\s.*>]+(\.[^\s.*>]+)*$")
# Zero-width, right-to-left, byte-order and NUL characters, and a family emoji joined by ZWJs.
UNUSUAL_TEXT = st.lists(
    st.characters(codec="utf-8", exclude_categories=("Cs",))
    | st.sampled_from(["\u200b", "\u200f", "\u202e", "\ufeff", "\u0000", "ﷺ", "👩\u200d👩\u200d👧"]),
    max_size=100,
).map("".join)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | UNUSUAL_TEXT
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(UNUSUAL_TEXT, children, max_size=5),
    max_leaves=30,
)


def documented_payload() -> dict[str, Any]:
    messages = list(meta.every_inbound_type(SENDER).values())
    statuses = [meta.status(SENDER, meta.new_wamid(), state) for state in ("sent", "delivered", "read", "failed")]
    return meta.notification("123", messages=messages, statuses=statuses, contacts=[meta.contact(SENDER)])


@st.composite
def mutated_payloads(draw: st.DrawFn) -> dict[str, Any]:
    """A documented payload with a few values replaced, removed or repeated at random places."""
    payload = copy.deepcopy(documented_payload())
    for _ in range(draw(st.integers(1, 4))):
        node: Any = payload
        while True:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            key = draw(st.sampled_from(keys))
            child = node[key]
            if isinstance(child, dict | list) and child and draw(st.booleans()):
                node = child
                continue
            action = draw(st.sampled_from(["replace", "remove", "repeat"]))
            if action == "replace":
                node[key] = draw(JSON_VALUES)
            elif action == "remove" and isinstance(node, dict):
                del node[key]
            elif isinstance(node, list):
                node.extend([child] * draw(st.integers(1, 50)))
            break
    return payload


def check_events(parsed: ParsedWebhook) -> None:
    for message in parsed.messages:
        assert message.contact.isdigit()
        assert SUBJECT.match(catalogue.inbound_subject("acme", message.contact))
        assert re.fullmatch(r"[!-~]{1,256}", message.wamid)
        message.SerializeToString()
    for status in parsed.statuses:
        assert status.contact.isdigit()
        assert SUBJECT.match(catalogue.status_subject("acme", status.contact))
        status.SerializeToString()
    for part in parsed.refused:
        assert part.reason
        if part.contact is not None:
            assert SUBJECT.match(catalogue.inbound_subject("acme", part.contact))


def parts(messages: Any) -> int:
    """A list holds its messages; anything else is one unreadable part (None: no part)."""
    return len(messages) if isinstance(messages, list) else int(messages is not None)


def message_count(payload: Any) -> int | None:
    """How many messages the body carries in readable changes; None when its envelope is broken."""
    try:
        return sum(
            parts(change["value"]["messages"])
            for entry in payload["entry"]
            for change in entry["changes"]
            if change["field"] == "messages" and isinstance(change["value"]["metadata"]["phone_number_id"], str)
        )
    except (KeyError, TypeError, AttributeError):
        return None


@given(st.binary(max_size=2_000))
def test_any_bytes_read_as_json_or_refused_with_a_reason(body: bytes) -> None:
    refusal = ""
    try:
        load_bounded(body, JsonLimits())
    except PayloadError as error:
        refusal = str(error) or "(no reason)"
    assert refusal != "(no reason)"


@given(JSON_VALUES)
def test_any_json_document_parses_or_is_refused_whole(document: Any) -> None:
    try:
        parsed = parse_webhook(document)
    except PayloadError as error:
        refusal = str(error)
    else:
        check_events(parsed)
        return
    assert refusal.startswith("not a WhatsApp Business Account notification: ")


@given(mutated_payloads())
def test_mutated_payloads_lose_no_message_and_make_only_valid_events(payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    try:
        parsed = parse_webhook(load_bounded(body, JsonLimits()))
    except PayloadError:
        return
    check_events(parsed)
    expected = message_count(payload)
    if expected is not None:
        refused_messages = [p for p in parsed.refused if re.search(r"\.messages(\[\d+\])?$", p.where)]
        assert len(parsed.messages) + len(refused_messages) == expected


@given(UNUSUAL_TEXT.filter(bool), st.sampled_from(["5", "5511999990001", "1" * 20]))
def test_any_text_from_any_valid_number_arrives_exactly(text: str, sender: str) -> None:
    body = json.dumps(meta.notification("123", messages=[meta.text(sender, text)]), ensure_ascii=False).encode()
    parsed = parse_webhook(load_bounded(body, JsonLimits()))
    assert [(m.contact, m.text.body) for m in parsed.messages] == [(sender, text)]
