"""Turn planning: what a turn publishes, decided from its messages, the tenant and the answer alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from tests.support.tenants import make_tenant
from zapflow.conversation import planning
from zapflow.conversation.planning import PendingTurn
from zapflow.conversation.responder import Answer
from zapflow.conversation.rules import RulesResponder
from zapflow.tenants.model import BotTenant, ReplySpec
from zapflow.v1 import inbound_pb2
from zapflow.whatsapp.messages import HistoryEntry

CONTACT = "5511977776666"
CLOSED = Timestamp(seconds=1_700_000_000)
NOW = Timestamp(seconds=1_700_000_002)
TWO_REPLIES = Answer("rule", (ReplySpec(text="one"), ReplySpec(text="two")), rule="r")


def tenant(**bot: Any) -> BotTenant:
    return make_tenant(**{"rules": [], "fallback": {"text": "fallback"}, **bot})


def text(wamid: str, body: str) -> inbound_pb2.InboundMessage:
    return inbound_pb2.InboundMessage(
        contact=CONTACT,
        wamid=wamid,
        type="text",
        text=inbound_pb2.Text(body=body),
        received_at=Timestamp(seconds=1_699_999_990),
    )


def reaction(wamid: str) -> inbound_pb2.InboundMessage:
    return inbound_pb2.InboundMessage(
        contact=CONTACT, wamid=wamid, type="reaction", reaction=inbound_pb2.Reaction(message_id="w1", emoji="👍")
    )


def pending(*messages: inbound_pb2.InboundMessage, first_seq: int = 5, **fields: Any) -> PendingTurn:
    numbered = [(first_seq + i, m) for i, m in enumerate(messages)]
    last = numbered[-1][0] if numbered else first_seq
    return PendingTurn(fields.pop("turn_id", f"in{first_seq}-{last}"), numbered, [], last, **fields)


def test_the_typing_indicator_marks_the_last_answerable_message_read() -> None:
    owner = tenant()
    turn = pending(text("w1", "hi"), text("w2", "prices?"), reaction("w3"))
    command = planning.read_receipt(turn, owner, CONTACT, NOW)

    assert command is not None
    assert command.command_id == "in5-7:read"
    assert (command.mark_read.wamid, command.mark_read.typing) == ("w2", True)
    assert (command.tenant, command.contact, command.turn_id, command.created_at) == (owner.name, CONTACT, "in5-7", NOW)


def test_no_typing_indicator_when_the_tenant_turns_it_off_or_nothing_is_answered() -> None:
    assert planning.read_receipt(pending(text("w1", "hi")), tenant(typingIndicator=False), CONTACT, NOW) is None
    assert planning.read_receipt(pending(reaction("w1")), tenant(), CONTACT, NOW) is None


def test_the_first_reply_quotes_the_last_message_once_the_turn_is_long_enough() -> None:
    long_turn = pending(text("w1", "a"), text("w2", "b"), reaction("w3"))
    plan = planning.plan_turn(long_turn, tenant(quoteAfterMessages=2), CONTACT, TWO_REPLIES, CLOSED, NOW)
    assert [c.reply_to_wamid for c in plan.commands] == ["w2", ""]

    # Reactions do not count towards the length.
    short_turn = pending(text("w1", "a"), reaction("w2"))
    plan = planning.plan_turn(short_turn, tenant(quoteAfterMessages=2), CONTACT, TWO_REPLIES, CLOSED, NOW)
    assert [c.reply_to_wamid for c in plan.commands] == ["", ""]

    plan = planning.plan_turn(long_turn, tenant(quoteAfterMessages=0), CONTACT, TWO_REPLIES, CLOSED, NOW)
    assert [c.reply_to_wamid for c in plan.commands] == ["", ""]


def test_chat_events_alone_are_settled_silently() -> None:
    turn = pending(reaction("w1"))
    assert planning.to_answer(turn) == ()

    plan = planning.plan_turn(turn, tenant(), CONTACT, TWO_REPLIES, CLOSED, NOW)

    assert plan.commands == ()
    assert plan.exchange == ()
    assert (plan.turn.outcome, list(plan.turn.command_ids)) == ("silent", [])
    assert list(plan.turn.inbound_wamids) == ["w1"]  # settled all the same
    assert plan.turn.last_inbound_seq == 5


def test_command_ids_are_derived_from_the_turn_id() -> None:
    turn = pending(text("w1", "a"), first_seq=41)
    first = planning.plan_turn(turn, tenant(), CONTACT, TWO_REPLIES, CLOSED, NOW)
    rerun = planning.plan_turn(turn, tenant(), CONTACT, TWO_REPLIES, CLOSED, Timestamp(seconds=1_800_000_000))

    assert [c.command_id for c in first.commands] == ["in41-41:0", "in41-41:1"]
    assert [c.command_id for c in rerun.commands] == [c.command_id for c in first.commands]
    assert list(first.turn.command_ids) == ["in41-41:0", "in41-41:1"]
    assert [c.text.body for c in first.commands] == ["one", "two"]
    assert {c.turn_id for c in first.commands} == {"in41-41"}


def test_the_turn_event_records_the_answer_and_the_exchange_for_the_history() -> None:
    owner = tenant()
    turn = pending(text("w1", "hi"), reaction("w2"), text("w3", "prices?"))
    answer = Answer("llm", (ReplySpec(text="It costs $10."),), prompt_tokens=12, completion_tokens=4, actions=("x",))

    plan = planning.plan_turn(turn, owner, CONTACT, answer, CLOSED, NOW)

    event = plan.turn
    assert (event.turn_id, event.tenant, event.contact) == ("in5-7", owner.name, CONTACT)
    assert list(event.inbound_seqs) == [5, 6, 7]
    assert (event.outcome, event.responder, event.prompt_tokens, event.completion_tokens) == ("llm", "rules", 12, 4)
    assert list(event.actions) == ["x"]
    assert (event.started_at, event.closed_at, event.answered_at) == (turn.messages[0][1].received_at, CLOSED, NOW)
    assert plan.exchange == (HistoryEntry("customer", "hi\nprices?"), HistoryEntry("bot", "It costs $10."))


async def test_a_first_contact_is_greeted_before_the_answer() -> None:
    owner = tenant(greeting={"text": "Welcome!"}, rules=[{"name": "p", "match": {"keywords": ["price"]},
                                                          "reply": {"text": "$10"}}])  # fmt: skip
    history = (HistoryEntry("customer", "earlier"),)
    for first_contact, texts in ((True, ["Welcome!", "$10"]), (False, ["$10"])):
        turn = pending(text("w1", "price"), reaction("w2"), first_contact=first_contact)
        asked = planning.responder_input(turn, owner, CONTACT, history)
        assert (asked.first_contact, asked.history, asked.messages) == (first_contact, history, (turn.messages[0][1],))

        plan = planning.plan_turn(turn, owner, CONTACT, await RulesResponder().answer(asked), CLOSED, NOW)
        assert [c.text.body for c in plan.commands] == texts


def test_duplicates_are_listed_and_not_answered() -> None:
    turn = pending(text("w9", "again?"), first_seq=8)
    turn.duplicates = ["w1", "w2"]
    plan = planning.plan_turn(turn, tenant(), CONTACT, TWO_REPLIES, CLOSED, NOW)
    assert list(plan.turn.duplicate_wamids) == ["w1", "w2"]
    assert list(plan.turn.inbound_wamids) == ["w9"]

    # A turn of copies only: nothing to answer, the range settled all the same.
    copies = PendingTurn("in12-12", [], ["w1"], 12)
    plan = planning.plan_turn(copies, tenant(), CONTACT, planning.SILENT, CLOSED, NOW)
    assert (plan.commands, plan.exchange, plan.turn.outcome) == ((), (), "silent")
    assert (list(plan.turn.duplicate_wamids), plan.turn.last_inbound_seq, plan.turn.started_at) == (["w1"], 12, NOW)


def sent(message: inbound_pb2.InboundMessage, at: datetime) -> inbound_pb2.InboundMessage:
    """The message as Meta timestamped it (when the customer sent it)."""
    message.sent_at.FromDatetime(at)
    return message


NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
LATE_TEMPLATE = {"messaging": {"lateTemplate": {"name": "sorry_we_missed_you", "bodyParameters": ["{name}"]}}}


def test_replies_carry_when_the_customer_s_window_closes_from_the_newest_message() -> None:
    turn = pending(sent(text("w1", "a"), NOON - timedelta(hours=2)), sent(text("w2", "b"), NOON))
    plan = planning.plan_turn(turn, tenant(), CONTACT, TWO_REPLIES, CLOSED, NOW)
    assert [c.window_closes_at.ToDatetime(UTC) for c in plan.commands] == [NOON + timedelta(hours=24)] * 2


def test_a_message_that_reached_us_after_its_window_closed_is_not_answered_with_free_text() -> None:
    stale = pending(sent(text("w1", "still open?"), NOON - timedelta(hours=25)))
    answer = planning.not_for_the_responder(tenant(), stale, NOON, opt_out_confirmed=False)

    assert answer is not None and answer.outcome == "window_closed"
    assert planning.plan_turn(stale, tenant(), CONTACT, answer, CLOSED, NOW).commands == ()
    # A message sent 23 hours ago still gets the responder.
    assert (
        planning.not_for_the_responder(
            tenant(), pending(sent(text("w1", "hi"), NOON - timedelta(hours=23))), NOON, False
        )
        is None
    )


def test_the_tenant_s_late_template_answers_a_late_message_with_the_customer_s_name() -> None:
    message = sent(text("w1", "hello?"), NOON - timedelta(days=2))
    message.contact_name = "Ana"
    late = pending(message)
    owner = tenant(spec=LATE_TEMPLATE)
    answer = planning.not_for_the_responder(owner, late, NOON, opt_out_confirmed=False)
    assert answer is not None

    (command,) = planning.plan_turn(late, owner, CONTACT, answer, CLOSED, NOW).commands
    assert command.WhichOneof("body") == "template"
    assert (command.template.name, list(command.template.body_parameters)) == ("sorry_we_missed_you", ["Ana"])
    assert command.command_id == "in5-5:late"


def test_an_opt_out_keyword_alone_is_confirmed_once_and_recorded() -> None:
    owner = tenant()
    for said in ("STOP", "Parar!", " sair ", "Cancelar.", "baja"):
        turn = pending(sent(text("w1", said), NOON))
        answer = planning.not_for_the_responder(owner, turn, NOON, opt_out_confirmed=False)
        assert answer is not None, said
        assert (answer.outcome, answer.actions) == ("opted_out", ("opt_out",))
        assert [r.text for r in answer.replies] == [owner.spec.messaging.opt_out_confirmation]

    again = planning.not_for_the_responder(owner, pending(sent(text("w1", "stop"), NOON)), NOON, opt_out_confirmed=True)
    assert again is not None and again.replies == () and again.actions == ("opt_out",)


def test_a_sentence_with_an_opt_out_word_in_it_is_a_question_for_the_responder() -> None:
    for said in ("don't stop the delivery", "quero cancelar meu pedido", "stop by tomorrow?"):
        assert planning.not_for_the_responder(tenant(), pending(sent(text("w1", said), NOON)), NOON, False) is None, (
            said
        )


def test_a_late_opt_out_is_recorded_without_the_late_template() -> None:
    late_stop = pending(sent(text("w1", "STOP"), NOON - timedelta(hours=30)))
    owner = tenant(spec=LATE_TEMPLATE)
    answer = planning.not_for_the_responder(owner, late_stop, NOON, opt_out_confirmed=False)

    assert answer is not None and (answer.outcome, answer.actions) == ("window_closed", ("opt_out",))
    assert planning.plan_turn(late_stop, owner, CONTACT, answer, CLOSED, NOW).commands == ()


def test_an_opt_out_sent_to_a_person_is_still_recorded() -> None:
    owner = tenant()
    assert planning.forwarded(owner, (text("w1", "STOP"),)).actions == ("opt_out",)
    assert planning.forwarded(owner, (text("w1", "my order?"),)).actions == ()
