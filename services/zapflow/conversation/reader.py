"""Reading a contact's next turn from the inbound stream, which is the buffer of pending messages.

A turn is every message on the contact's subject after its cursor, in stream order, up to the
newest one ingested; or, after a crash, the in-flight turn recorded before, re-read whole so
its re-run has the same id and range.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from zapflow.conversation.planning import PendingTurn
from zapflow.conversation.turnstate import InFlight, TurnState
from zapflow.platform import catalogue, metrics
from zapflow.platform.keys import ContactKeys
from zapflow.v1 import inbound_pb2, turn_pb2


class TurnReader:
    def __init__(self, js: JetStreamContext, state: TurnState, max_messages: int) -> None:
        self._js = js
        self._state = state
        self._max_messages = max_messages

    async def cursor(self, keys: ContactKeys) -> int:
        """The contact's cursor, rebuilt from its last turn event when Redis does not have it."""
        known = await self._state.cursor(keys)
        if known is not None:
            return known
        try:
            last = await self._js.get_last_msg(catalogue.EVENTS.name, catalogue.turn_subject(keys.tenant, keys.contact))
            cursor = turn_pb2.Turn.FromString(last.data or b"").last_inbound_seq
        except NotFoundError:
            cursor = 0
        return await self._state.seed_cursor(keys, cursor)

    async def next_turn(self, keys: ContactKeys, message_key_ttl_s: int, turn_key_ttl_s: int) -> PendingTurn | None:
        """The in-flight turn of a crashed run, or the messages after the cursor; None when there are none."""
        position = await self._state.position(keys)
        if position.in_flight is not None:
            return await self._replay(position.in_flight)
        cursor = position.cursor if position.cursor is not None else await self.cursor(keys)
        # The newest message ingested: reading stops there instead of paying a NotFound lookup
        # to learn the burst ended. Unknown after Redis lost its data: read to the stream's end.
        last_seen = position.last_seen
        subject = catalogue.inbound_subject(keys.tenant, keys.contact)
        messages: list[tuple[int, inbound_pb2.InboundMessage]] = []
        trace_headers: list[dict[str, str]] = []
        duplicates: list[str] = []
        last_seq = cursor
        while len(messages) < self._max_messages:
            if last_seen is not None and last_seq >= last_seen:
                break
            try:
                raw = await self._js.get_msg(catalogue.INBOUND.name, seq=last_seq + 1, subject=subject, next=True)
            except NotFoundError:
                break
            assert raw.seq is not None
            last_seq = raw.seq
            message = inbound_pb2.InboundMessage.FromString(raw.data or b"")
            if await self._state.claim(keys, message.wamid, raw.seq, message_key_ttl_s) != raw.seq:
                duplicates.append(message.wamid)
                metrics.DUPLICATES_DROPPED.labels(keys.tenant, "message_key").inc()
                continue
            messages.append((raw.seq, message))
            trace_headers.append(dict(raw.headers or {}))
        if last_seq == cursor:
            return None
        first = messages[0][0] if messages else last_seq
        pending = PendingTurn(f"in{first}-{last_seq}", messages, duplicates, last_seq, cursor == 0, trace_headers)
        await self._state.begin(keys, pending, turn_key_ttl_s)
        return pending

    async def _replay(self, record: InFlight) -> PendingTurn:
        messages: list[tuple[int, inbound_pb2.InboundMessage]] = []
        trace_headers: list[dict[str, str]] = []
        for seq in record.seqs:
            raw = await self._js.get_msg(catalogue.INBOUND.name, seq=seq)
            messages.append((seq, inbound_pb2.InboundMessage.FromString(raw.data or b"")))
            trace_headers.append(dict(raw.headers or {}))
        return PendingTurn(
            record.turn_id, messages, record.duplicates, record.last_seq, record.first_contact, trace_headers
        )
