"""Normalising Meta's webhook payloads into protobuf events."""

from __future__ import annotations

import json

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
        ([], "JSON object"),
        ({"object": "page", "entry": []}, "whatsapp_business_account"),
        ({"object": "whatsapp_business_account"}, "body.entry is missing"),
        ({"object": "whatsapp_business_account", "entry": {}}, "entry must be a list"),
        (meta.notification("1", messages=[{"id": "w", "timestamp": "1", "type": "text"}]), "messages[0].from"),
        (meta.notification("1", messages=[meta.text(SENDER, "x") | {"timestamp": "yesterday"}]), "unix time"),
        (
            meta.notification("1", messages=[meta.text(SENDER, "x") | {"text": "not an object"}]),
            "text must be an object",
        ),
        (meta.notification("1", messages=[meta.text("not-digits", "x")]), "WhatsApp id"),
    ],
)
def test_malformed_payloads_name_what_is_wrong(payload: object, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        parse_webhook(payload)


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
