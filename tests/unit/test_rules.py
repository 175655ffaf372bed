"""The rules responder: keywords, regexes, button ids, greeting and fallback."""

from __future__ import annotations

from tests.support.tenants import make_tenant
from zapflow.conversation.rules import answer, reply_command
from zapflow.tenants.model import BotSpec
from zapflow.v1 import inbound_pb2, outbound_pb2

BOT = BotSpec.model_validate(
    {
        "greeting": {"text": "Welcome!"},
        "rules": [
            {"name": "prices", "match": {"keywords": ["preço", "price list"]}, "reply": {"text": "$10"}},
            {"name": "order", "match": {"regex": r"order\s*#?\d+"}, "reply": {"text": "Checking your order"}},
            {
                "name": "menu",
                "match": {"keywords": ["menu"], "buttonIds": ["open-menu"]},
                "reply": {
                    "text": "Pick one",
                    "list": {"button": "Options", "sections": [{"title": "A", "rows": [{"id": "r1", "title": "One"}]}]},
                },
            },
        ],
        "fallback": {"text": "Sorry?"},
    }
)


def text(body: str) -> inbound_pb2.InboundMessage:
    return inbound_pb2.InboundMessage(type="text", text=inbound_pb2.Text(body=body))


def test_keywords_ignore_case_and_accents_but_not_word_boundaries() -> None:
    assert answer(BOT, (text("Qual o PRECO?"),), first_contact=False).rule == "prices"
    assert answer(BOT, (text("send me the price list"),), first_contact=False).rule == "prices"
    assert answer(BOT, (text("menus"),), first_contact=False).outcome == "fallback"


def test_regex_rule() -> None:
    assert answer(BOT, (text("where is ORDER #1234"),), first_contact=False).rule == "order"


def test_button_and_list_replies_route_by_id() -> None:
    message = inbound_pb2.InboundMessage(
        type="interactive", interactive=inbound_pb2.InteractiveReply(kind="button_reply", id="open-menu", title="x")
    )
    assert answer(BOT, (message,), first_contact=False).rule == "menu"


def test_media_captions_are_matched() -> None:
    message = inbound_pb2.InboundMessage(type="image", media=inbound_pb2.Media(kind="image", caption="preço?"))
    assert answer(BOT, (message,), first_contact=False).rule == "prices"


def test_first_contact_gets_the_greeting_then_the_rule_or_the_greeting_alone() -> None:
    with_rule = answer(BOT, (text("menu"),), first_contact=True)
    assert [r.text for r in with_rule.replies] == ["Welcome!", "Pick one"]
    alone = answer(BOT, (text("hello"),), first_contact=True)
    assert (alone.outcome, [r.text for r in alone.replies]) == ("greeting", ["Welcome!"])
    assert [r.text for r in answer(BOT, (text("hello"),), first_contact=False).replies] == ["Sorry?"]


def test_a_burst_is_read_newest_first() -> None:
    burst = (text("hi"), text("actually, what is the preço?"), text("thanks"))
    assert answer(BOT, burst, first_contact=False).rule == "prices"
    assert answer(BOT, (text("menu"), text("price list")), first_contact=False).rule == "prices"


def test_reply_commands_carry_buttons_and_lists() -> None:
    tenant = make_tenant()
    buttons = reply_command(tenant.spec.bot.rules[1].reply, outbound_pb2.OutboundCommand())
    assert [b.id for b in buttons.interactive.buttons] == ["again"]
    menu = reply_command(BOT.rules[2].reply, outbound_pb2.OutboundCommand())
    assert menu.interactive.list.sections[0].rows[0].id == "r1"
    plain = reply_command(BOT.rules[0].reply, outbound_pb2.OutboundCommand())
    assert plain.WhichOneof("body") == "text"
