"""Normalising Meta's webhook payloads into protobuf events."""

from __future__ import annotations

import json
import re

import pytest

from tests.support import meta
from zapflow.whatsapp.signature import sign, signature_matches
from zapflow.whatsapp.webhook import PayloadError, parse_webhook, phone_number_ids_hint

SENDER = "5511999990001"


def test_every_documented_inbound_type_parses() -> None:
    samples = meta.every_inbound_type(SENDER)
    payload = meta.notification("123", messages=list(samples.values()), contacts=[meta.contact(SENDER, "Ana")])
    parsed = parse_webhook(payload)

    by_type = {m.type: m for m in parsed.messages}
    assert set(by_type) == set(samples)
    for kind, message in by_type.items():
        assert message.contact == SENDER
        assert message.contact_name == "Ana"
        assert message.wamid == samples[kind]["id"]
        assert json.loads(message.raw_json) == samples[kind]
    assert by_type["text"].text.body == "hello"
    assert by_type["image"].media.caption == "a photo"
    assert by_type["image"].media.kind == "image"
    assert by_type["document"].media.filename == "invoice.pdf"
    assert by_type["audio"].media.voice is True
    assert by_type["reaction"].reaction.emoji == "👍"
    assert by_type["reaction"].reaction.message_id == "wamid.REACTED"
    assert by_type["location"].location.latitude == pytest.approx(-23.55)
    assert by_type["contacts"].contacts.contacts[0].phones == ["+55 11 99999-0000"]
    assert by_type["contacts"].contacts.contacts[0].emails == ["ana@example.com"]
    assert by_type["order"].order.items[0].quantity == 2
    assert by_type["interactive"].interactive.kind == "list_reply"
    assert by_type["interactive"].interactive.id == "row-1"
    assert by_type["button"].interactive.id == "CONFIRM"
    assert by_type["system"].system.new_wa_id == "5511888880000"
    assert by_type["unsupported"].unsupported.error_codes == [131051]


def test_several_entries_messages_and_statuses_in_one_post() -> None:
    first = meta.notification("111", messages=[meta.text(SENDER, "a"), meta.text(SENDER, "b")])
    second = meta.notification("222", statuses=[meta.status(SENDER, "wamid.X", "delivered")])
    first["entry"].extend(second["entry"])
    first["entry"][0]["changes"].append({"field": "message_template_status_update", "value": {}})

    parsed = parse_webhook(first)

    assert [m.text.body for m in parsed.messages] == ["a", "b"]
    assert [(s.wamid, s.status, s.phone_number_id) for s in parsed.statuses] == [("wamid.X", "delivered", "222")]
    assert parsed.phone_number_ids == {"111", "222"}
    assert parsed.ignored_changes == 1


def test_quoted_and_forwarded_messages_keep_their_context() -> None:
    message = meta.text(SENDER, "this one", context={"from": SENDER, "id": "wamid.EARLIER", "forwarded": True})
    parsed = parse_webhook(meta.notification("1", messages=[message]))
    assert parsed.messages[0].quoted_wamid == "wamid.EARLIER"
    assert parsed.messages[0].forwarded is True


def test_failed_status_carries_its_error() -> None:
    error = {"code": 131047, "title": "Re-engagement message", "error_data": {"details": "24h passed"}}
    parsed = parse_webhook(meta.notification("1", statuses=[meta.status(SENDER, "wamid.F", "failed", [error])]))
    assert parsed.statuses[0].errors[0].code == 131047
    assert parsed.statuses[0].errors[0].detail == "24h passed"


def test_a_type_meta_adds_later_is_kept_not_refused() -> None:
    message = {"from": SENDER, "id": "wamid.NEW", "timestamp": meta.now(), "type": "hologram", "hologram": {}}
    parsed = parse_webhook(meta.notification("1", messages=[message]))
    assert parsed.messages[0].WhichOneof("content") == "unsupported"
    assert "hologram" in parsed.messages[0].unsupported.reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ([], "Input should be a valid dictionary"),
        ({"object": "page", "entry": []}, "object: Input should be 'whatsapp_business_account'"),
        ({"object": "whatsapp_business_account"}, "entry: Field required"),
        ({"object": "whatsapp_business_account", "entry": {}}, "entry: Input should be a valid list"),
    ],
)
def test_a_body_that_is_no_notification_names_what_is_wrong(payload: object, reason: str) -> None:
    with pytest.raises(PayloadError, match=re.escape(reason)):
        parse_webhook(payload)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"id": "w", "timestamp": meta.now(), "type": "text", "text": {"body": "x"}}, "from: Field required"),
        (meta.text(SENDER, "x") | {"timestamp": "yesterday"}, "timestamp: Input should be a valid integer"),
        (meta.text(SENDER, "x") | {"timestamp": "99"}, "timestamp: Value error, a unix time between"),
        (meta.text(SENDER, "x") | {"timestamp": str(10**12)}, "timestamp: Value error, a unix time between"),
        (meta.text(SENDER, "x") | {"text": "not an object"}, "text: Input should be a valid dictionary"),
        (meta.text(SENDER, "x") | {"text": None}, "a text message needs its text object"),
        (meta.text("55.11.*", "x"), "from: String should match pattern"),
        (meta.text("5511 >", "x"), "from: String should match pattern"),
        (meta.text(SENDER, "x", wamid="wamid with spaces"), "id: String should match pattern"),
        (meta.text(SENDER, "x") | {"type": "Text!"}, "type: String should match pattern"),
        (
            meta.text(SENDER, "x") | {"type": "location", "location": {"latitude": 91, "longitude": 0}},
            "location.latitude: Input should be less than or equal to 90",
        ),
        (
            meta.every_inbound_type(SENDER)["order"]
            | {"order": {"product_items": [{"product_retailer_id": "a", "quantity": 10**20}]}},
            "order.product_items.0.quantity",
        ),
        (
            {k: v for k, v in meta.text(SENDER, "x").items() if k != "from"} | {"from_user_id": "BR.1502576394655843"},
            "business-scoped user id but no phone number",
        ),
    ],
)
def test_a_malformed_message_is_refused_alone_with_its_reason(message: dict[str, object], reason: str) -> None:
    good = meta.text(SENDER, "still here")
    parsed = parse_webhook(meta.notification("1", messages=[message, good]))

    assert [m.text.body for m in parsed.messages] == ["still here"]
    [refused] = parsed.refused
    assert refused.where == "entry[0].changes[0].value.messages[0]"
    assert reason in refused.reason
    assert json.loads(refused.raw) == message
    assert refused.phone_number_id == "1"
    assert not refused.is_status


def test_a_refused_part_keeps_its_contact_when_that_much_is_readable() -> None:
    unreadable = meta.text(SENDER, "x") | {"text": 42}
    status = meta.status(SENDER, "wamid.S", "read") | {"timestamp": "soon"}
    parsed = parse_webhook(meta.notification("1", messages=[unreadable, meta.text("5.5", "y")], statuses=[status]))

    assert [(r.contact, r.is_status) for r in parsed.refused] == [(SENDER, False), (None, False), (SENDER, True)]


def test_a_malformed_entry_or_change_sinks_only_itself() -> None:
    good = meta.notification("1", messages=[meta.text(SENDER, "kept")])
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            "not an entry",
            {"id": "2", "changes": [{"field": "messages", "value": {"metadata": {}}}, *good["entry"][0]["changes"]]},
        ],
    }
    parsed = parse_webhook(payload)

    assert [m.text.body for m in parsed.messages] == ["kept"]
    assert [r.where for r in parsed.refused] == ["entry[0]", "entry[1].changes[0].value"]
    assert "metadata.phone_number_id: Field required" in parsed.refused[1].reason


def test_unknown_fields_and_types_are_kept_and_counted_while_documented_ones_are_not() -> None:
    documented = meta.every_inbound_type(SENDER)["contacts"]
    novel = meta.text(SENDER, "x") | {"sparkle": {"level": 9}, "type": "hologram", "hologram": {}}
    status = meta.status(SENDER, "wamid.S", "sent") | {"pricing": {"category": "service", "mood": "good"}}
    parsed = parse_webhook(meta.notification("1", messages=[documented, novel], statuses=[status]))

    assert parsed.unknown_types == ["hologram"]
    assert sorted(parsed.unknown_fields) == [
        "entry[0].changes[0].value.messages[1].hologram",
        "entry[0].changes[0].value.messages[1].sparkle",
        "entry[0].changes[0].value.statuses[0].pricing.mood",
    ]
    assert json.loads(parsed.messages[1].raw_json)["sparkle"] == {"level": 9}
    assert json.loads(parsed.statuses[0].raw_json)["pricing"]["mood"] == "good"


def test_a_malformed_profile_name_costs_the_name_not_the_message() -> None:
    payload = meta.notification("1", messages=[meta.text(SENDER, "hi")], contacts=[{"profile": "?", "wa_id": SENDER}])
    parsed = parse_webhook(payload)
    assert (parsed.messages[0].text.body, parsed.messages[0].contact_name, parsed.refused) == ("hi", "", [])


def test_phone_number_id_hint_reads_the_raw_body() -> None:
    body = json.dumps(meta.notification("987654321", messages=[meta.text(SENDER, "x")])).encode()
    assert phone_number_ids_hint(body) == {"987654321"}


def test_signature_is_hmac_sha256_of_the_raw_body() -> None:
    body = b'{"object":"whatsapp_business_account"}'
    header = sign(body, "s3cret")
    assert header.startswith("sha256=")
    assert len(header) == 7 + 64
    assert signature_matches(body, header, "s3cret")
    assert not signature_matches(body + b" ", header, "s3cret")
    assert not signature_matches(body, header, "other")
    assert not signature_matches(body, None, "s3cret")
    assert not signature_matches(body, header.removeprefix("sha256="), "s3cret")
