"""Dead letters read back for an operator: list, show and purge what `ZF_DLQ` holds.

Consumers dead-letter a message they can never handle (bus.py), and the gateway each part of a
webhook body it cannot read; nothing consumes `ZF_DLQ`, which keeps them 30 days. Filters on the
subject (tenant, contact) are applied by the server, through a short-lived consumer of its own;
filters on the letter itself (service, consumer) are applied here. Purging uses the server's
secure erase, like an erasure: a purge by subject would leave the bytes in the stream's files.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Iterable, Sequence
from contextlib import aclosing, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from google.protobuf.message import DecodeError
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from zapflow.platform import bus, catalogue
from zapflow.tenants.model import TENANT_NAME_PATTERN
from zapflow.v1 import turn_pb2
from zapflow.whatsapp.payload import WA_ID_PATTERN

STREAM = catalogue.DEAD_LETTER.name
# Messages fetched per request while scanning.
SCAN_BATCH = 256
# Every message counted as pending is there to fetch; a fetch that still gets nothing means they
# were purged or expired meanwhile.
FETCH_TIMEOUT_S = 5.0
# The scanning consumer is deleted when done; one left by a killed command goes away on its own.
SCAN_CONSUMER_IDLE_S = 60.0
CONTACT_ID = re.compile(WA_ID_PATTERN)
# Kept as they are when a payload is shown; every other control or format character is escaped,
# so a hostile payload cannot drive the terminal (escape sequences) or reorder it (bidi marks).
PRINTABLE_CONTROLS = frozenset("\n\t")
HEX_BYTES_PER_LINE = 16


class DeadLetterError(Exception):
    """A request the dead-letter stream cannot answer; the message says why."""


@dataclass(frozen=True)
class Payload:
    """A payload as it can be shown: UTF-8 text with control characters escaped, else hex."""

    encoding: Literal["utf-8", "hex"]
    text: str
    size: int


@dataclass(frozen=True)
class DeadLetter:
    """One message of `ZF_DLQ`, decoded."""

    seq: int
    subject: str
    service: str
    consumer: str
    original_subject: str
    tenant: str
    contact: str
    message_id: str
    deliveries: int
    reason: str
    payload: bytes
    at: datetime

    def payload_shown(self) -> Payload:
        try:
            text = self.payload.decode("utf-8")
        except UnicodeDecodeError:
            lines = (
                self.payload[start : start + HEX_BYTES_PER_LINE].hex(" ")
                for start in range(0, len(self.payload), HEX_BYTES_PER_LINE)
            )
            return Payload("hex", "\n".join(lines), len(self.payload))
        return Payload("utf-8", printable(text), len(self.payload))

    def summary(self) -> dict[str, Any]:
        """The letter without its payload, as JSON-ready values."""
        return {
            "seq": self.seq,
            "at": self.at.isoformat(),
            "service": self.service,
            "consumer": self.consumer,
            "tenant": self.tenant,
            "contact": self.contact,
            "original_subject": self.original_subject,
            "message_id": self.message_id,
            "deliveries": self.deliveries,
            "reason": self.reason,
            "payload_bytes": len(self.payload),
        }


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters: each field left None matches every value."""

    tenant: str | None = None
    service: str | None = None
    consumer: str | None = None
    contact: str | None = None

    def __post_init__(self) -> None:
        if self.tenant is not None and not re.match(TENANT_NAME_PATTERN, self.tenant):
            raise DeadLetterError(f"not a tenant name: {self.tenant!r} (lowercase letters, digits and -)")
        if self.contact is not None and not (CONTACT_ID.match(self.contact) or self.contact == catalogue.UNATTRIBUTED):
            raise DeadLetterError(
                f"not a contact: {self.contact!r} (a WhatsApp id, digits only, or {catalogue.UNATTRIBUTED!r})"
            )

    def subjects(self) -> list[str]:
        """The subjects the server filters on: the tenant and the contact are tokens of every dead letter's subject."""
        if self.tenant is None and self.contact is None:
            return list(catalogue.DEAD_LETTER.subjects)
        by_stream = catalogue.contact_subjects(self.tenant or "*", self.contact or "*")
        return list(by_stream[STREAM])

    def admits(self, letter: DeadLetter) -> bool:
        return (self.service is None or letter.service == self.service) and (
            self.consumer is None or letter.consumer == self.consumer
        )


@dataclass(frozen=True)
class Listing:
    """The newest dead letters that match, newest first, and how many match in all."""

    letters: list[DeadLetter]
    matched: int


def printable(text: str) -> str:
    """The text with control and format characters (escape sequences, zero-width and bidi marks) escaped."""
    return "".join(
        char
        if char in PRINTABLE_CONTROLS or unicodedata.category(char)[0] != "C"
        else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


async def require_stream(js: JetStreamContext) -> None:
    """The dead-letter stream exists; else this NATS is not zapflow's, and finding nothing there proves nothing."""
    try:
        await bus.require_streams(js, [catalogue.DEAD_LETTER])
    except bus.StreamsMissing as error:
        raise DeadLetterError(str(error)) from None


async def list_dead_letters(js: JetStreamContext, wanted: DeadLetterFilter, limit: int) -> Listing:
    """The `limit` newest dead letters that match, and how many match."""
    await require_stream(js)
    newest: deque[DeadLetter] = deque(maxlen=limit)
    matched = 0
    async with aclosing(letters_on(js, wanted.subjects())) as letters:
        async for letter in letters:
            if wanted.admits(letter):
                matched += 1
                newest.append(letter)
    return Listing(list(reversed(newest)), matched)


async def show(js: JetStreamContext, seq: int) -> DeadLetter:
    """The dead letter at a stream sequence."""
    await require_stream(js)
    try:
        stored = await js.get_msg(STREAM, seq=seq)
    except NotFoundError:
        raise DeadLetterError(
            f"no dead letter at sequence {seq} in {STREAM}: purged, expired (they are kept 30 days), or never there"
        ) from None
    return decode(seq, stored.subject or "", stored.data or b"", stored.time)


async def purge_one(js: JetStreamContext, seq: int) -> DeadLetter:
    """Securely erase the dead letter at a stream sequence; returns what it was."""
    letter = await show(js, seq)
    if not await erase(js, [seq]):
        raise DeadLetterError(f"the dead letter at sequence {seq} was purged or expired meanwhile")
    return letter


async def purge_matching(js: JetStreamContext, wanted: DeadLetterFilter) -> int:
    """Securely erase every dead letter of a tenant that matches; how many were erased."""
    if wanted.tenant is None:
        raise DeadLetterError("a purge by filter needs a tenant")
    await require_stream(js)
    async with aclosing(letters_on(js, wanted.subjects())) as letters:
        sequences = [letter.seq async for letter in letters if wanted.admits(letter)]
    return await erase(js, sequences)


async def erase(js: JetStreamContext, sequences: Iterable[int]) -> int:
    """Securely erase dead letters; those already gone are skipped. How many were erased."""
    return sum([await bus.secure_delete(js, STREAM, seq) for seq in sequences])


async def letters_on(js: JetStreamContext, subjects: Sequence[str]) -> AsyncGenerator[DeadLetter]:
    """Every dead letter on these (non-overlapping) subjects, oldest first, read by a consumer of its own."""
    name = f"dead-letters-{uuid.uuid4().hex}"
    config = api.ConsumerConfig(
        name=name,
        filter_subjects=list(subjects),
        ack_policy=api.AckPolicy.NONE,
        deliver_policy=api.DeliverPolicy.ALL,
        inactive_threshold=SCAN_CONSUMER_IDLE_S,
        mem_storage=True,
    )
    await js.add_consumer(STREAM, config)
    try:
        subscription = await js.pull_subscribe_bind(name, stream=STREAM)
        try:
            remaining = (await subscription.consumer_info()).num_pending or 0
            while remaining:
                try:
                    batch = await subscription.fetch(min(remaining, SCAN_BATCH), timeout=FETCH_TIMEOUT_S)
                except TimeoutError:
                    return
                for msg in batch:
                    yield decode(msg.metadata.sequence.stream, msg.subject, msg.data, msg.metadata.timestamp)
                remaining = batch[-1].metadata.num_pending or 0
        finally:
            await subscription.unsubscribe()
    finally:
        with suppress(NotFoundError):
            await js.delete_consumer(STREAM, name)


def decode(seq: int, subject: str, data: bytes, stored_at: datetime | None) -> DeadLetter:
    """A stored message as a dead letter; one that is not a DeadLetter event is shown as it is, with why."""
    service, original = catalogue.dead_letter_origin(subject)
    # The catalogue's UNATTRIBUTED when the contact could not be read.
    contact = catalogue.contact_of(original)
    stored = stored_at or datetime.now(UTC)
    try:
        event = turn_pb2.DeadLetter.FromString(data)
    except DecodeError as error:
        return DeadLetter(
            seq, subject, service, "", original, catalogue.tenant_of(subject), contact, "", 0,
            f"not a DeadLetter event ({error})", data, stored,
        )  # fmt: skip
    return DeadLetter(
        seq=seq,
        subject=subject,
        service=service,
        consumer=event.consumer,
        original_subject=original,
        tenant=catalogue.tenant_of(subject),
        contact=contact,
        message_id=event.message_id,
        deliveries=event.deliveries,
        reason=event.reason,
        payload=event.payload,
        at=event.at.ToDatetime(tzinfo=UTC) if event.HasField("at") else stored,
    )
