"""When a turn goes to a person, and what the customer is told: the pure decisions of issue #11.

The conversation engine asks `asked_by_customer` before the responder and `after_answer` after it
(conversation/handoff.py); the handoff service picks the customer's notice with `notice_text` and
refuses free text outside the 24-hour window (handoff/hours.py). The same decisions through the
whole platform: tests/integration/test_handoff_flow.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from zapflow.conversation import handoff, rules
from zapflow.conversation.handoff import HandoffAsk, Streaks, after_answer, asked_by_customer
from zapflow.conversation.planning import PendingTurn, handoff_event
from zapflow.conversation.responder import Answer, handoff_action
from zapflow.handoff import hours
from zapflow.tenants.model import BotSpec, BusinessHoursSpec, HandoffSpec, ReplySpec
from zapflow.v1 import inbound_pb2
from zapflow.whatsapp import window

DEFAULTS = HandoffSpec()
ANSWERED = Answer("rule", (ReplySpec(text="It costs $10."),), rule="prices")
FAQ_MISS = Answer(handoff.FAQ_MISS_OUTCOME, (ReplySpec(text="Sorry?"),))
FAILED = Answer(handoff.FAILURE_OUTCOME, (ReplySpec(text="Our assistant is busy."),))
# Monday to Friday, 09:00 to 18:00 in São Paulo (UTC-3 all year since 2019).
WEEKDAYS_IN_SAO_PAULO = BusinessHoursSpec.model_validate(
    {
        "timezone": "America/Sao_Paulo",
        "hours": [{"days": ["mon", "tue", "wed", "thu", "fri"], "opens": "09:00", "closes": "18:00"}],
    }
)
# 2026-03-02 is a Monday.
MONDAY_NOON_IN_SAO_PAULO = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


def text(body: str, wamid: str = "wamid.1") -> inbound_pb2.InboundMessage:
    return inbound_pb2.InboundMessage(wamid=wamid, type="text", text=inbound_pb2.Text(body=body))


def button(button_id: str, title: str) -> inbound_pb2.InboundMessage:
    return inbound_pb2.InboundMessage(
        type="interactive", interactive=inbound_pb2.InteractiveReply(kind="button_reply", id=button_id, title=title)
    )


def spec(**fields: object) -> HandoffSpec:
    return HandoffSpec.model_validate(fields)


# --- the customer asks for a person ---


@pytest.mark.parametrize(
    ("words", "keyword"),
    [
        pytest.param("quero falar com um atendente", "atendente", id="pt"),
        pytest.param("Quero falar com uma PESSOA, por favor", "falar com uma pessoa", id="pt-case"),
        pytest.param("preciso falar com alguém", "falar com alguem", id="pt-accent"),
        pytest.param("¿Puedo hablar con una persona?", "hablar con una persona", id="es"),
        pytest.param("I want to talk to a person", "talk to a person", id="en"),
        pytest.param("Is there a real person there?", "real person", id="en-phrase"),
    ],
)
def test_the_default_keywords_ask_for_a_person_in_pt_es_and_en(words: str, keyword: str) -> None:
    assert asked_by_customer(DEFAULTS, (text(words),)) == HandoffAsk(handoff.CUSTOMER_ASKED, keyword)


@pytest.mark.parametrize(
    "words",
    [
        pytest.param("what is the price?", id="unrelated"),
        pytest.param("humanity is great", id="part-of-a-word"),
        pytest.param("the agents were kind", id="plural-is-another-word"),
        pytest.param("", id="empty"),
    ],
)
def test_words_that_only_look_like_a_keyword_do_not(words: str) -> None:
    assert asked_by_customer(DEFAULTS, (text(words),)) is None


def test_any_message_of_the_burst_asks_and_the_latest_one_is_reported() -> None:
    burst = (text("hello"), text("can I talk to a human?"), text("or an atendente"), text("thanks"))
    assert asked_by_customer(DEFAULTS, burst) == HandoffAsk(handoff.CUSTOMER_ASKED, "atendente")


def test_a_button_title_and_a_media_caption_ask_too() -> None:
    assert asked_by_customer(DEFAULTS, (button("b1", "Falar com atendente"),)) is not None
    caption = inbound_pb2.InboundMessage(type="image", media=inbound_pb2.Media(kind="image", caption="agente?"))
    assert asked_by_customer(DEFAULTS, (caption,)) == HandoffAsk(handoff.CUSTOMER_ASKED, "agente")


def test_the_tenant_s_own_keywords_replace_the_defaults() -> None:
    own = spec(keywords=["gerente"])
    assert asked_by_customer(own, (text("chame o gerente"),)) == HandoffAsk(handoff.CUSTOMER_ASKED, "gerente")
    assert asked_by_customer(own, (text("quero um atendente"),)) is None


def test_no_keyword_asks_when_handoff_is_off_or_has_no_keywords() -> None:
    assert asked_by_customer(spec(enabled=False), (text("atendente"),)) is None
    assert asked_by_customer(spec(keywords=[]), (text("atendente"),)) is None


# --- after the bot's answer: tools, rules, misses and failures in a row ---


def test_the_model_s_handoff_tool_hands_over_with_its_reason_and_starts_the_streaks_again() -> None:
    answer = Answer("llm", (ReplySpec(text="A person will help you."),), actions=(handoff_action("llm", "refund"),))
    ask, streaks = after_answer(DEFAULTS, "openai", answer, Streaks(faq_misses=0, failures=1))
    assert (ask, streaks) == (HandoffAsk("llm", "refund"), Streaks())


def test_a_rule_with_handoff_true_hands_over_by_its_button_with_reason_rule() -> None:
    bot = BotSpec.model_validate(
        {
            "rules": [
                {"name": "talk-to-us", "match": {"buttonIds": ["talk"]}, "handoff": True},
                {"name": "prices", "match": {"keywords": ["price"]}, "reply": {"text": "$10"}},
            ]
        }
    )
    answer = rules.answer(bot, (button("talk", "Talk to us"),), first_contact=True)
    # Nothing of the bot's own: the handoff service tells the customer, the greeting included.
    assert (answer.outcome, answer.replies, answer.rule) == ("rule", (), "talk-to-us")
    ask, _ = after_answer(DEFAULTS, "rules", answer, Streaks())
    assert ask == HandoffAsk("rule", "talk-to-us")


def test_the_faq_responder_missing_in_a_row_hands_over_at_the_tenant_s_count() -> None:
    three = spec(after_faq_misses=3)
    ask, streaks = after_answer(three, "faq", FAQ_MISS, Streaks())
    assert (ask, streaks) == (None, Streaks(faq_misses=1))
    ask, streaks = after_answer(three, "faq", FAQ_MISS, streaks)
    assert (ask, streaks) == (None, Streaks(faq_misses=2))
    ask, streaks = after_answer(three, "faq", FAQ_MISS, streaks)
    assert (ask, streaks) == (HandoffAsk(handoff.FAQ_MISSES, "3"), Streaks())


def test_an_answer_between_misses_starts_the_count_again() -> None:
    five = spec(after_faq_misses=5)
    _, streaks = after_answer(five, "faq", FAQ_MISS, Streaks(faq_misses=2))
    assert streaks == Streaks(faq_misses=3)
    ask, streaks = after_answer(five, "faq", Answer("faq", (ReplySpec(text="Free shipping."),)), streaks)
    assert (ask, streaks) == (None, Streaks())


def test_the_rules_responder_s_fallback_is_not_a_faq_miss() -> None:
    ask, streaks = after_answer(spec(after_faq_misses=1), "rules", FAQ_MISS, Streaks())
    assert (ask, streaks) == (None, Streaks())


def test_a_responder_failing_in_a_row_hands_over_whatever_the_responder() -> None:
    twice = spec(after_failures=2)
    ask, streaks = after_answer(twice, "openai", FAILED, Streaks())
    assert (ask, streaks) == (None, Streaks(failures=1))
    ask, streaks = after_answer(twice, "rules", FAILED, streaks)
    assert (ask, streaks) == (HandoffAsk(handoff.RESPONDER_FAILURES, "2"), Streaks())


def test_a_good_answer_between_failures_starts_the_count_again() -> None:
    _, streaks = after_answer(spec(after_failures=2), "rules", ANSWERED, Streaks(failures=1))
    assert streaks == Streaks()


def test_zero_means_never_for_misses_and_failures() -> None:
    never = spec(after_faq_misses=0, after_failures=0)
    assert after_answer(never, "faq", FAQ_MISS, Streaks(faq_misses=99)) == (None, Streaks(faq_misses=100))
    assert after_answer(never, "faq", FAILED, Streaks(failures=99)) == (None, Streaks(failures=100))


def test_with_handoff_off_nothing_hands_over_but_the_streaks_still_count() -> None:
    off = spec(enabled=False, after_faq_misses=1, after_failures=1)
    tool = Answer("llm", (ReplySpec(text="ok"),), actions=(handoff_action("llm", "angry"),))
    assert after_answer(off, "openai", tool, Streaks()) == (None, Streaks())
    assert after_answer(off, "faq", FAQ_MISS, Streaks()) == (None, Streaks(faq_misses=1))
    assert after_answer(off, "rules", FAILED, Streaks()) == (None, Streaks(failures=1))


# --- what the handoff service is told by a turn ---


def stamp(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


def test_a_handoff_event_carries_the_turn_s_messages_and_their_sequences_without_chat_events() -> None:
    reaction = inbound_pb2.InboundMessage(wamid="wamid.r", type="reaction", reaction=inbound_pb2.Reaction(emoji="👍"))
    pending = PendingTurn(
        "turn-9", [(7, text("first", "wamid.a")), (8, reaction), (9, text("atendente", "wamid.b"))], [], 9
    )

    requested = handoff_event(pending, "t", "5511", "turn-9", HandoffAsk("customer_asked", "atendente"), stamp(1))
    assert (requested.kind, requested.reason, requested.detail, requested.owner) == (
        "requested",
        "customer_asked",
        "atendente",
        "turn-9",
    )
    assert [m.wamid for m in requested.messages] == ["wamid.a", "wamid.b"]
    assert list(requested.inbound_seqs) == [7, 9]

    forwarded = handoff_event(pending, "t", "5511", "take:1", None, stamp(2))
    assert (forwarded.kind, forwarded.reason, forwarded.owner) == ("forwarded", "", "take:1")
    assert list(forwarded.inbound_seqs) == [7, 9]


# --- business hours, the notice, the 24-hour window ---


def test_without_hours_agents_are_always_there() -> None:
    assert hours.is_open(BusinessHoursSpec(), datetime(2026, 3, 1, 3, 0, tzinfo=UTC))


@pytest.mark.parametrize(
    ("at", "open_"),
    [
        pytest.param(MONDAY_NOON_IN_SAO_PAULO, True, id="monday-noon"),
        pytest.param(datetime(2026, 3, 2, 12, 0, tzinfo=UTC), True, id="monday-09:00-opens"),
        pytest.param(datetime(2026, 3, 2, 11, 59, tzinfo=UTC), False, id="monday-08:59"),
        pytest.param(datetime(2026, 3, 2, 21, 0, tzinfo=UTC), False, id="monday-18:00-closed"),
        pytest.param(datetime(2026, 3, 7, 15, 0, tzinfo=UTC), False, id="saturday-noon"),
        # 01:00 UTC on Tuesday is still Monday 22:00 in São Paulo: the local day counts.
        pytest.param(datetime(2026, 3, 3, 1, 0, tzinfo=UTC), False, id="local-day"),
    ],
)
def test_business_hours_are_in_the_tenant_s_time_zone(at: datetime, open_: bool) -> None:
    assert hours.is_open(WEEKDAYS_IN_SAO_PAULO, at) is open_


def test_until_midnight_includes_the_last_minute() -> None:
    late = BusinessHoursSpec.model_validate({"hours": [{"days": ["sun"], "opens": "20:00", "closes": "24:00"}]})
    assert hours.is_open(late, datetime(2026, 3, 1, 23, 59, tzinfo=UTC))
    assert not hours.is_open(late, datetime(2026, 3, 2, 0, 0, tzinfo=UTC))


def test_the_notice_adds_the_expected_wait_only_when_agents_are_online() -> None:
    notice = spec(notice="A person will answer.", wait_notice="About {minutes} min.")
    assert hours.notice_text(notice, MONDAY_NOON_IN_SAO_PAULO, 2, 125.0) == "A person will answer. About 3 min."
    assert hours.notice_text(notice, MONDAY_NOON_IN_SAO_PAULO, 1, 5.0) == "A person will answer. About 1 min."
    assert hours.notice_text(notice, MONDAY_NOON_IN_SAO_PAULO, 0, 125.0) == "A person will answer."
    assert hours.notice_text(notice, MONDAY_NOON_IN_SAO_PAULO, 2, None) == "A person will answer."
    no_wait = spec(notice="A person will answer.", wait_notice="")
    assert hours.notice_text(no_wait, MONDAY_NOON_IN_SAO_PAULO, 2, 125.0) == "A person will answer."


def test_outside_business_hours_the_customer_gets_the_closed_notice() -> None:
    closed = spec(notice="Now.", closed_notice="We open at 9.", business_hours=WEEKDAYS_IN_SAO_PAULO.model_dump())
    saturday = datetime(2026, 3, 7, 15, 0, tzinfo=UTC)
    assert hours.notice_text(closed, saturday, 3, 60.0) == "We open at 9."
    assert hours.notice_text(closed, MONDAY_NOON_IN_SAO_PAULO, 0, None) == "Now."


def test_the_24_hour_window_opens_with_the_customer_s_last_message() -> None:
    last = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
    assert window.closes_at(None) is None
    assert window.closes_at(last) == last + timedelta(hours=24)
    assert window.is_open(last, last + timedelta(hours=23, minutes=59))
    assert not window.is_open(last, last + timedelta(hours=24))
    assert not window.is_open(None, last)
