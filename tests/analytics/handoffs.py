"""Handoffs written straight into the relational store, as the handoff service leaves them.

For the tests of what happens to them later (archive, retention, erasure), which need a handoff
with a given history, not the service that makes one.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.store.events import at
from zapflow.store.models import HANDOFF_ASSIGNED, HANDOFF_RESOLVED, HANDOFF_WAITING, Handoff, HandoffEvent

AGENT = "ana@example.com"


async def add_handoff(
    engine: AsyncEngine,
    contact: str,
    *,
    tenant: str = "acme",
    conversation_id: int | None = None,
    reason: str = "customer_asked",
    requested: float = 0,
    assigned: float | None = None,
    first_reply: float | None = None,
    resolved: float | None = None,
    note: str | None = None,
    labels: tuple[str, ...] = (),
) -> int:
    """A handoff and its timeline; times in seconds after T0 (None: it did not happen); its id."""
    status = HANDOFF_RESOLVED if resolved is not None else HANDOFF_ASSIGNED if assigned is not None else HANDOFF_WAITING
    moments = [moment for moment in (requested, assigned, first_reply, resolved) if moment is not None]
    async with engine.begin() as conn:
        handoff_id = await conn.scalar(
            insert(Handoff)
            .values(
                tenant=tenant,
                contact=contact,
                conversation_id=conversation_id,
                request_id=f"turn-{uuid.uuid4().hex}",
                status=status,
                reason=reason,
                detail="wants to talk about the invoice",
                priority=0,
                customer_name="Maria",
                agent=AGENT if assigned is not None else None,
                labels=list(labels),
                requested_at=at(requested),
                assigned_at=_at(assigned),
                first_reply_at=_at(first_reply),
                resolved_at=_at(resolved),
                resolution=("agent" if first_reply is not None else "timeout") if resolved is not None else None,
                resolved_by=AGENT if resolved is not None else None,
                last_activity_at=at(max(moments)),
            )
            .returning(Handoff.id)
        )
        assert handoff_id is not None
        timeline = [
            ("requested", requested, "bot", None),
            ("assigned", assigned, AGENT, None),
            ("reply", first_reply, AGENT, None),
            ("note", requested if note is not None else None, AGENT, note),
            ("resolved", resolved, AGENT, None),
        ]
        for kind, moment, actor, text in timeline:
            if moment is not None:
                await conn.execute(
                    insert(HandoffEvent).values(
                        handoff_id=handoff_id,
                        tenant=tenant,
                        contact=contact,
                        at=at(moment),
                        kind=kind,
                        actor=actor,
                        text=text,
                        data={},
                    )
                )
    return handoff_id


def _at(seconds: float | None) -> datetime | None:
    return at(seconds) if seconds is not None else None
