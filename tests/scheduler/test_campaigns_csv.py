"""A campaign's recipient list (CSV or JSON) and settings: what is accepted, each refusal with where and why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.json_format import MessageToDict

from zapflow.conversation import optout
from zapflow.gateway.graph import graph_payload
from zapflow.scheduler.campaigns import (
    CampaignInputError,
    new_campaign,
    parse_csv,
    parse_entries,
    template_components,
)
from zapflow.store import campaigns as store
from zapflow.store.campaigns import NewRecipient
from zapflow.v1 import outbound_pb2 as pb

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def problems(text: str) -> list[str]:
    with pytest.raises(CampaignInputError) as refused:
        parse_csv(text)
    return refused.value.problems


def test_phones_in_any_usual_spelling_become_whatsapp_ids_with_their_parameters() -> None:
    text = (
        "\ufeffphone,body.1,body.2,header.1,button.0\n"
        "+55 11 98765-4321,Ana,20%,Black Friday,promo-ana\n"
        "\n"  # blank lines are not rows
        '5511987650002,"Bruno, Jr.",10%,Cyber Monday,promo-bruno\n'
    )
    assert parse_csv(text) == [
        NewRecipient(
            "5511987654321", {"body.1": "Ana", "body.2": "20%", "header.1": "Black Friday", "button.0": "promo-ana"}
        ),
        NewRecipient(
            "5511987650002",
            {"body.1": "Bruno, Jr.", "body.2": "10%", "header.1": "Cyber Monday", "button.0": "promo-bruno"},
        ),
    ]


def test_a_spreadsheet_saved_with_semicolons_is_read_too() -> None:
    assert parse_csv("phone;body.1\n+5511987650001;Ana, a cliente\n") == [
        NewRecipient("5511987650001", {"body.1": "Ana, a cliente"})
    ]


def test_a_template_without_parameters_takes_a_list_of_phones() -> None:
    assert parse_csv("phone\n5511987650001\n5511987650002\n") == [
        NewRecipient("5511987650001", {}),
        NewRecipient("5511987650002", {}),
    ]


def test_every_bad_row_is_reported_with_its_line_number() -> None:
    found = problems(
        "phone,body.1,body.2\n"
        "5511987650001,Ana,10%\n"
        "5511987650002,Bruno\n"  # a field missing
        "not a phone,Carla,5%\n"
        "+55 11 98765-0001,Ana again,10%\n"  # the same number as line 2
        "5511987650003,,5%\n"  # an empty parameter
        "5511987650004,Eva,5%,extra\n"
    )
    assert found == [
        "line 3: 2 fields, the header has 3 (phone, body.1, body.2)",
        "line 4: not a phone number: expected 6 to 15 digits, optionally with +, got 'not a phone'",
        "line 5: +55 11 98765-0001 is already on line 2",
        "line 6: body.1 is empty",
        "line 7: 4 fields, the header has 3 (phone, body.1, body.2)",
    ]


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("name,body.1", "line 1: the first column must be phone, not 'name'"),
        ("phone,body.1,footer", "line 1: unknown column 'footer'"),
        ("phone,body.1,body.3", "line 1: body parameters must be body.1 to body.2 without gaps"),
        ("phone,body.1,body.1", "line 1: columns named twice: body.1"),
        ("phone,header.1,header.image", "line 1: a template has one header parameter, not header.1, header.image"),
        ("phone,button.0,button.0.url", "line 1: a button index has both a payload and a URL column"),
    ],
)
def test_a_bad_header_is_refused_before_any_row(header: str, problem: str) -> None:
    found = problems(f"{header}\n5511987650001,a,b\n")
    assert found[0].startswith(problem), found


def test_values_are_held_to_what_meta_accepts() -> None:
    found = problems(f"phone,header.1\n5511987650001,{'x' * 61}\n")
    assert found == ["line 2: header.1 has 61 characters; a header has at most 60"]
    assert problems("phone,header.image\n5511987650001,http://example.com/a.png\n") == [
        "line 2: header.image must be an https URL"
    ]
    assert problems(f"phone,body.1\n5511987650001,{'x' * 1025}\n") == [
        "line 2: body.1 has 1025 characters, more than a template allows"
    ]


def test_an_empty_list_or_only_a_header_is_refused() -> None:
    assert problems("") == ["the file is empty: expected a header row (phone, then parameter columns)"]
    assert problems("phone,body.1\n") == ["no recipients: the list has a header and nothing else"]


def test_many_problems_are_all_kept_and_the_message_shows_the_first() -> None:
    rows = "".join(f"bad{i},x\n" for i in range(30))
    with pytest.raises(CampaignInputError) as refused:
        parse_csv("phone,body.1\n" + rows)
    assert len(refused.value.problems) == 30
    assert str(refused.value).endswith("; and 10 more problems")


def test_json_recipients_must_all_have_the_first_ones_parameters() -> None:
    recipients = parse_entries([("+5511987650001", {"body.1": "Ana"}), ("5511987650002", {"body.1": "Bia"})])
    assert [recipient.contact for recipient in recipients] == ["5511987650001", "5511987650002"]
    with pytest.raises(CampaignInputError) as refused:
        parse_entries([("5511987650001", {"body.1": "Ana"}), ("5511987650002", {"body.1": "Bia", "body.2": "x"})])
    assert refused.value.problems == [
        "recipients[1]: parameters body.1, body.2; every recipient needs the first one's: body.1"
    ]


def test_parameters_become_metas_components_header_body_then_buttons() -> None:
    parameters = {
        "button.1.url": "order/123",
        "body.2": "20%",
        "button.0": "promo-ana",
        "body.1": "Ana",
        "header.image": "https://example.com/p.png",
    }
    command = pb.OutboundCommand(
        template=pb.OutTemplate(name="promo", language="pt_BR", components=template_components(parameters))
    )
    assert graph_payload(command)["template"]["components"] == [
        {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://example.com/p.png"}}]},
        {"type": "body", "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "20%"}]},
        {
            "type": "button",
            "sub_type": "quick_reply",
            "index": "0",
            "parameters": [{"type": "payload", "payload": "promo-ana"}],
        },
        {"type": "button", "sub_type": "url", "index": "1", "parameters": [{"type": "text", "text": "order/123"}]},
    ]
    assert template_components({}) == []
    assert MessageToDict(template_components({"header.1": "Hi"})[0]) == {
        "type": "header",
        "parameters": [{"type": "text", "text": "Hi"}],
    }


def test_campaign_settings_are_checked_together() -> None:
    new = new_campaign("acme", "black_friday", "pt_BR", "marketing", None, None, "cli", NOW)
    assert (new.start_at, new.name) == (NOW, "black_friday 2026-12-01 12:00")
    later = NOW + timedelta(days=1)
    assert new_campaign("acme", "promo", "es", "utility", " Sale ", later, "cli", NOW).start_at == later
    with pytest.raises(CampaignInputError) as refused:
        new_campaign("acme", "Black Friday", "portuguese", "promo", "", NOW - timedelta(hours=1), "cli", NOW)
    assert len(refused.value.problems) == 5
    with pytest.raises(CampaignInputError, match="give its time zone"):
        new_campaign("acme", "promo", "pt_BR", "marketing", None, datetime(2026, 12, 2, 9, 0), "cli", NOW)


def test_campaign_command_ids_name_the_campaign_the_contact_and_the_try() -> None:
    assert store.parse_command_id(store.command_id("0a1b2c3d4e5f", "5511987650001", 2)) == (
        "0a1b2c3d4e5f",
        "5511987650001",
        2,
    )
    assert store.parse_command_id("turn-1:0") is None
    assert store.parse_command_id("cp:x:y:z") is None


def test_the_recorder_and_the_engine_name_the_opt_out_action_alike() -> None:
    assert store.OPT_OUT_ACTION == optout.OPT_OUT_ACTION
