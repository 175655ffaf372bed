"""Builders for the events the store records, with readable defaults."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from zapflow.v1 import inbound_pb2, outbound_pb2, turn_pb2

TENANT = "acme"
CONTACT = "5511999990001"
T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
# A stream sequence is a uint64, but PostgreSQL's BIGINT and SQLite's INTEGER stop at 2**63 - 1.
UNSTORABLE_SEQ = 2**63


def at(seconds: float) -> datetime:
    """A moment `seconds` after T0."""
    return T0 + timedelta(seconds=seconds)


def stamp(seconds: float) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(at(seconds))
    return value


def inbound(
    wamid: str,
    text: str = "hello",
    *,
    seconds: float = 0,
    tenant: str = TENANT,
    contact: str = CONTACT,
    name: str = "Maria",
) -> inbound_pb2.InboundMessage:
    return inbound_pb2.InboundMessage(
        tenant=tenant,
        phone_number_id="123456789012345",
        contact=contact,
        contact_name=name,
        wamid=wamid,
        sent_at=stamp(seconds),
        received_at=stamp(seconds + 0.5),
        type="text",
        text=inbound_pb2.Text(body=text),
    )


def reaction(wamid: str, emoji: str, *, seconds: float = 0, tenant: str = TENANT) -> inbound_pb2.InboundMessage:
    return inbound_pb2.InboundMessage(
        tenant=tenant,
        contact=CONTACT,
        wamid=wamid,
        sent_at=stamp(seconds),
        type="reaction",
        reaction=inbound_pb2.Reaction(message_id="wamid.out.any", emoji=emoji),
    )


def reply(
    turn_id: str, index: int, text: str, *, seconds: float = 0, tenant: str = TENANT, contact: str = CONTACT
) -> outbound_pb2.OutboundCommand:
    return outbound_pb2.OutboundCommand(
        command_id=f"{turn_id}:{index}",
        tenant=tenant,
        contact=contact,
        turn_id=turn_id,
        created_at=stamp(seconds),
        text=outbound_pb2.OutText(body=text),
    )


def sent(
    command: outbound_pb2.OutboundCommand, wamid: str, *, seconds: float = 0, result: str = "sent"
) -> outbound_pb2.OutboundResult:
    return outbound_pb2.OutboundResult(
        command_id=command.command_id,
        tenant=command.tenant,
        contact=command.contact,
        turn_id=command.turn_id,
        result=result,
        wamid=wamid if result == "sent" else "",
        at=stamp(seconds),
    )


def status(
    wamid: str,
    value: str,
    *,
    seconds: float = 0,
    tenant: str = TENANT,
    contact: str = CONTACT,
    errors: Sequence[inbound_pb2.StatusError] = (),
) -> inbound_pb2.StatusUpdate:
    return inbound_pb2.StatusUpdate(
        tenant=tenant, contact=contact, wamid=wamid, status=value, at=stamp(seconds), errors=errors
    )


def turn(
    turn_id: str,
    wamids: Sequence[str],
    *,
    seconds: float = 0,
    tenant: str = TENANT,
    contact: str = CONTACT,
    outcome: str = "rule",
    rule: str = "prices",
) -> turn_pb2.Turn:
    return turn_pb2.Turn(
        turn_id=turn_id,
        tenant=tenant,
        contact=contact,
        inbound_wamids=wamids,
        responder="rules",
        outcome=outcome,
        rule=rule,
        started_at=stamp(seconds),
        closed_at=stamp(seconds + 2),
        answered_at=stamp(seconds + 2.25),
    )
