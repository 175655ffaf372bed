"""Whole exchanges recorded in the store, for tests about what happens to conversations later."""

from __future__ import annotations

from tests.store.events import inbound, reply, sent, status, turn
from zapflow.store.repository import ConversationStore

ALICE = "5511900000001"
BOB = "5511900000002"


async def exchange(
    store: ConversationStore, key: str, seconds: float, *, tenant: str = "acme", contact: str = ALICE
) -> None:
    """A customer message, the bot's answer, its delivery and the turn: one of everything."""
    await store.record_inbound(
        inbound(f"wamid.in.{key}", f"hello {key}", seconds=seconds, tenant=tenant, contact=contact), 1
    )
    command = reply(f"turn-{key}", 0, f"answer {key}", seconds=seconds + 2, tenant=tenant, contact=contact)
    await store.record_outbound(command)
    await store.record_outbound_result(sent(command, f"wamid.out.{key}", seconds=seconds + 3))
    await store.record_status(
        status(f"wamid.out.{key}", "delivered", seconds=seconds + 4, tenant=tenant, contact=contact)
    )
    await store.record_turn(turn(f"turn-{key}", [f"wamid.in.{key}"], seconds=seconds, tenant=tenant, contact=contact))
