"""What a turn publishes, decided without I/O: the commands, the turn event and the history exchange.

Every command id is derived from the turn id, so the re-run of an in-flight turn after a crash
publishes the same ids and JetStream's dedup collapses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from zapflow.conversation import optout
from zapflow.conversation.handoff import HandoffAsk
from zapflow.conversation.optout import OPT_OUT_ACTION
from zapflow.conversation.responder import Answer, TurnInput
from zapflow.conversation.rules import reply_command
from zapflow.tenants.model import BotTenant, ReplySpec
from zapflow.v1 import handoff_pb2, inbound_pb2, outbound_pb2, turn_pb2
from zapflow.whatsapp import window
from zapflow.whatsapp.messages import CHAT_EVENT_TYPES, HistoryEntry, describe
from zapflow.whatsapp.templates import fill_template

# The outcome of a turn with nothing to answer: no command, no history.
SILENT = Answer("silent", ())
# A person has the conversation: the turn's messages go to them, the bot says nothing.
FORWARDED = Answer("forwarded", ())
FORWARDED_WITH_OPT_OUT = Answer("forwarded", (), actions=(OPT_OUT_ACTION,))
# The turn asked for a person: the handoff service tells the customer, the bot says nothing.
HANDOFF_OUTCOME = "handoff"
REQUESTED = "requested"
FORWARDED_KIND = "forwarded"
# The turn's newest message reached zapflow after the customer's window closed: free text may not
# answer it; the tenant's late template does, or nothing.
WINDOW_CLOSED = Answer("window_closed", ())


@dataclass
class PendingTurn:
    """A contact's messages to answer in one turn, read from the inbound stream."""

    turn_id: str
    messages: list[tuple[int, inbound_pb2.InboundMessage]]  # (stream seq, message), in order
    duplicates: list[str]  # wamids of re-sent copies of earlier messages, skipped
    last_seq: int  # every message of the contact up to this sequence is settled by the turn
    # No turn of this contact was answered before (the cursor was 0): greet them.
    first_contact: bool = False
    # The trace context of each message's webhook, from its NATS headers.
    trace_headers: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class TurnPlan:
    commands: tuple[outbound_pb2.OutboundCommand, ...]  # the replies, in order
    turn: turn_pb2.Turn
    exchange: tuple[HistoryEntry, ...]  # the customer's and the bot's entries; empty when silent


def to_answer(pending: PendingTurn) -> tuple[inbound_pb2.InboundMessage, ...]:
    """The messages the responder is asked about: events about the chat are settled without an answer."""
    return tuple(message for _, message in pending.messages if message.type not in CHAT_EVENT_TYPES)


def responder_input(
    pending: PendingTurn, tenant: BotTenant, contact: str, history: tuple[HistoryEntry, ...]
) -> TurnInput:
    """What the responder is asked: the messages to answer, the history, and whether this is a first contact."""
    return TurnInput(
        turn_id=pending.turn_id,
        tenant=tenant,
        contact=contact,
        messages=to_answer(pending),
        history=history,
        first_contact=pending.first_contact,
    )


def read_receipt(
    pending: PendingTurn, tenant: BotTenant, contact: str, now: Timestamp
) -> outbound_pb2.OutboundCommand | None:
    """Mark the burst read and show the typing indicator while the responder works, if the tenant wants it."""
    messages = to_answer(pending)
    if not messages or not tenant.spec.bot.typing_indicator:
        return None
    command = _command(pending.turn_id, "read", tenant, contact, now)
    command.mark_read.CopyFrom(outbound_pb2.MarkRead(wamid=messages[-1].wamid, typing=True))
    return command


def plan_turn(
    pending: PendingTurn, tenant: BotTenant, contact: str, answer: Answer, closed_at: Timestamp, now: Timestamp
) -> TurnPlan:
    """The replies to publish, the turn event that settles the messages, and what the history records."""
    messages = to_answer(pending)
    if not messages:
        answer = SILENT
    bot = tenant.spec.bot
    # A long burst is answered quoting its last message, so the customer sees what is answered.
    quote = bot.quote_after_messages > 0 and len(messages) >= bot.quote_after_messages
    commands = []
    for index, reply in enumerate(answer.replies):
        command = _command(pending.turn_id, str(index), tenant, contact, now)
        if quote and index == 0:
            command.reply_to_wamid = messages[-1].wamid
        commands.append(reply_command(reply, command))
    late_template = tenant.spec.messaging.late_template
    if answer.outcome == WINDOW_CLOSED.outcome and late_template is not None and OPT_OUT_ACTION not in answer.actions:
        template = _command(pending.turn_id, "late", tenant, contact, now)
        commands.append(fill_template(template, late_template, messages[-1].contact_name))
    closes = window_closes_at(pending)
    if closes is not None:
        for command in commands:
            command.window_closes_at.FromDatetime(closes)
    customer_text = "\n".join(describe(m) for m in messages)
    answer_text = "\n".join(r.text for r in answer.replies)
    turn = turn_pb2.Turn(
        turn_id=pending.turn_id,
        tenant=tenant.name,
        contact=contact,
        inbound_wamids=[m.wamid for _, m in pending.messages],
        inbound_seqs=[s for s, _ in pending.messages],
        last_inbound_seq=pending.last_seq,
        duplicate_wamids=pending.duplicates,
        responder=bot.responder,
        outcome=answer.outcome,
        rule=answer.rule,
        command_ids=[c.command_id for c in commands],
        started_at=pending.messages[0][1].received_at if pending.messages else now,
        answered_at=now,
        closed_at=closed_at,
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens,
        actions=list(answer.actions),
        customer_text=customer_text,
        answer_text=answer_text,
    )
    exchange: tuple[HistoryEntry, ...] = ()
    if messages:
        exchange = (HistoryEntry("customer", customer_text),)
        if answer_text:
            exchange += (HistoryEntry("bot", answer_text),)
    return TurnPlan(tuple(commands), turn, exchange)


def sent_at(message: inbound_pb2.InboundMessage) -> datetime:
    """When the customer sent the message (Meta's timestamp; the webhook's arrival if Meta gave none)."""
    return (message.sent_at if message.HasField("sent_at") else message.received_at).ToDatetime(UTC)


def window_closes_at(pending: PendingTurn) -> datetime | None:
    """When the customer's window closes, counted from the newest message of the turn."""
    return window.closes_at(max((sent_at(message) for _, message in pending.messages), default=None))


def forwarded(tenant: BotTenant, messages: tuple[inbound_pb2.InboundMessage, ...]) -> Answer:
    """The turn goes to the person who has the conversation; an opt-out in it is still kept."""
    return FORWARDED_WITH_OPT_OUT if optout.asked_to_opt_out(tenant.spec.messaging, messages) else FORWARDED


def not_for_the_responder(
    tenant: BotTenant, pending: PendingTurn, now: datetime, opt_out_confirmed: bool
) -> Answer | None:
    """A turn the responder is not asked about: its messages reached us after their window closed, or an opt-out.

    An opt-out is confirmed once; a late one is recorded but not answered, as free text may not go out.
    """
    opted_out = optout.asked_to_opt_out(tenant.spec.messaging, to_answer(pending))
    actions = (OPT_OUT_ACTION,) if opted_out else ()
    closes = window_closes_at(pending)
    if closes is None or closes <= now:
        return Answer(WINDOW_CLOSED.outcome, (), actions=actions)
    if not opted_out:
        return None
    confirmation = () if opt_out_confirmed else (ReplySpec(text=tenant.spec.messaging.opt_out_confirmation),)
    return Answer(optout.OPTED_OUT_OUTCOME, confirmation, actions=actions)


def handoff_event(
    pending: PendingTurn, tenant: str, contact: str, owner: str, ask: HandoffAsk | None, now: Timestamp
) -> handoff_pb2.HandoffEvent:
    """What the handoff service gets from a turn: a request for a person (`ask`), or messages for one."""
    answered = [(seq, message) for seq, message in pending.messages if message.type not in CHAT_EVENT_TYPES]
    return handoff_pb2.HandoffEvent(
        tenant=tenant,
        contact=contact,
        turn_id=pending.turn_id,
        kind=REQUESTED if ask is not None else FORWARDED_KIND,
        reason=ask.reason if ask is not None else "",
        detail=ask.detail if ask is not None else "",
        messages=[message for _, message in answered],
        inbound_seqs=[seq for seq, _ in answered],
        at=now,
        owner=owner,
    )


def _command(
    turn_id: str, suffix: str, tenant: BotTenant, contact: str, now: Timestamp
) -> outbound_pb2.OutboundCommand:
    return outbound_pb2.OutboundCommand(
        command_id=f"{turn_id}:{suffix}", tenant=tenant.name, contact=contact, turn_id=turn_id, created_at=now
    )
