"""The inbound messages this process holds unacknowledged until their turn is published.

A held message is acknowledged once the turn that answers it is durable: by this replica when
it answered the turn, or when another replica's turn event says so. Until then it is kept from
redelivery by in-progress heartbeats. A failed acknowledgement or heartbeat loses nothing: the
message is redelivered, and ingest finds it settled (or holds it again).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from nats.aio.msg import Msg

from zapflow.platform import metrics
from zapflow.platform.keys import ContactKeys
from zapflow.platform.logging import get_logger

log = get_logger(__name__)


@dataclass
class HeldMessages:
    by_contact: dict[ContactKeys, list[tuple[int, Msg]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, keys: ContactKeys, seq: int, msg: Msg) -> None:
        self.by_contact[keys].append((seq, msg))
        metrics.HELD_MESSAGES.inc()

    async def acknowledge_through(self, keys: ContactKeys, last_seq: int) -> None:
        """Acknowledge the contact's held messages up to `last_seq`: their turn is published."""
        held = self.by_contact.get(keys, [])
        done = [msg for seq, msg in held if seq <= last_seq]
        remaining = [(seq, msg) for seq, msg in held if seq > last_seq]
        if remaining:
            self.by_contact[keys] = remaining
        else:
            self.by_contact.pop(keys, None)
        metrics.HELD_MESSAGES.dec(len(done))
        failed: list[Exception] = []
        for msg in done:
            try:
                await msg.ack()
            except Exception as error:  # NATS away: the message comes back and is found settled
                failed.append(error)
        if failed:
            metrics.ENGINE_FAILURES.labels("ack").inc(len(failed))
            log.warning(
                "acknowledging held messages failed; they will be redelivered and settled",
                tenant=keys.tenant,
                failed=len(failed),
                error=type(failed[0]).__name__,
            )

    async def keep_alive(self) -> set[ContactKeys]:
        """Send every held message's in-progress heartbeat; returns the contacts they belong to."""
        # A snapshot: messages come and go while the heartbeats are awaited.
        contacts = set(self.by_contact)
        messages = [msg for held in self.by_contact.values() for _, msg in held]
        failed: list[Exception] = []
        for msg in messages:
            try:
                await msg.in_progress()
            except Exception as error:  # NATS away: redelivery after ack_wait re-holds the message
                failed.append(error)
        if failed:
            metrics.ENGINE_FAILURES.labels("heartbeat").inc(len(failed))
            log.warning("in-progress heartbeats failed", failed=len(failed), error=type(failed[0]).__name__)
        return contacts
