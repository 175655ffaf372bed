"""Campaigns in the relational store: campaigns, their recipients, and customers' preferences.

Every change of a recipient is one conditional UPDATE (`WHERE status IN (...)`), so two scheduler
replicas, a redelivered result or a late status can never move a recipient twice or backwards:
whoever loses a race finds nothing left to change. The runner claims recipients by moving them
from queued to sending in one statement, before it publishes their commands; a process killed
in between leaves them sending, and the next slice publishes them again under the same command
id (scheduler/campaigns.py).
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, String, and_, cast, delete, exists, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from zapflow.store.models import (
    CAMPAIGN_ACTIVE,
    CAMPAIGN_CANCELLED,
    CAMPAIGN_DONE,
    CAMPAIGN_FAILED,
    CAMPAIGN_SCHEDULED,
    RECIPIENT_STATES,
    Campaign,
    CampaignRecipient,
    ContactPreference,
)

# The action a Turn event carries when the customer opted out (conversation/optout.py sets it).
OPT_OUT_ACTION = "opt_out"
# Command ids of campaign messages: cp:<campaign>:<contact>:<attempt>.
COMMAND_PREFIX = "cp"
QUEUED = "queued"
SENDING = "sending"
SENT = "sent"
DELIVERED = "delivered"
READ = "read"
FAILED = "failed"
SKIPPED = "skipped"
# Delivery only moves forward: a late "delivered" never undoes "read".
DELIVERY_ORDER = (SENDING, SENT, DELIVERED, READ)
# Rows per INSERT or IN (...) list: within every driver's limit on bound parameters.
CHUNK = 1000


class CampaignError(Exception):
    """A change the campaign's state does not allow; the message says why."""


def command_id(campaign_id: str, contact: str, attempt: int) -> str:
    return f"{COMMAND_PREFIX}:{campaign_id}:{contact}:{attempt}"


def parse_command_id(command: str) -> tuple[str, str, int] | None:
    """(campaign, contact, attempt) of a campaign's command id; None for any other command."""
    parts = command.split(":")
    if len(parts) != 4 or parts[0] != COMMAND_PREFIX or not parts[3].isdigit():
        return None
    return parts[1], parts[2], int(parts[3])


@dataclass(frozen=True)
class NewCampaign:
    tenant: str
    name: str
    template_name: str
    template_language: str
    template_category: str
    start_at: datetime
    created_by: str


@dataclass(frozen=True)
class NewRecipient:
    contact: str
    # Parameter column -> value, as in the CSV: {"body.1": "Ana"}.
    parameters: dict[str, str]


@dataclass(frozen=True)
class CampaignInfo:
    id: str
    tenant: str
    name: str
    template_name: str
    template_language: str
    template_category: str
    status: str
    reason: str | None
    start_at: datetime
    next_at: datetime | None
    created_at: datetime
    updated_at: datetime
    created_by: str

    @property
    def active(self) -> bool:
        return self.status in CAMPAIGN_ACTIVE


@dataclass(frozen=True)
class Outcome:
    """Recipients who ended one way for one reason: failed by 131050, skipped as opted out."""

    status: str
    reason: str
    error_code: int | None
    error_title: str | None
    count: int


@dataclass(frozen=True)
class Progress:
    campaign: CampaignInfo
    # Every recipient state, with its count (0 included).
    by_status: dict[str, int]
    # Failed and skipped recipients by reason, the largest group first.
    outcomes: list[Outcome]
    # Queued recipients that wait for a later try (131049), and when the first is due.
    deferred: int
    next_retry_at: datetime | None

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


@dataclass(frozen=True)
class Claimed:
    """A recipient the runner holds in `sending`: its command is published under `command_id`."""

    contact: str
    parameters: dict[str, str]
    attempt: int

    def command_id(self, campaign_id: str) -> str:
        return command_id(campaign_id, self.contact, self.attempt)


@dataclass(frozen=True)
class Pending:
    """What is left of a campaign for the runner."""

    ready: bool  # queued recipients that may go now
    next_retry_at: datetime | None  # the earliest deferred one
    sending: int  # published, waiting for their send result


@dataclass(frozen=True)
class Recipient:
    campaign_id: str
    contact: str
    attempt: int
    status: str
    category: str


@dataclass(frozen=True)
class Preference:
    tenant: str
    contact: str
    opted_out_at: datetime | None
    opt_out_source: str | None
    marketing_stopped_at: datetime | None


@dataclass
class Listed:
    campaign: CampaignInfo
    by_status: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


def _info(row: Any) -> CampaignInfo:
    return CampaignInfo(
        id=row.id,
        tenant=row.tenant,
        name=row.name,
        template_name=row.template_name,
        template_language=row.template_language,
        template_category=row.template_category,
        status=row.status,
        reason=row.reason,
        start_at=row.start_at,
        next_at=row.next_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        created_by=row.created_by,
    )


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


_CLAIMED = (CampaignRecipient.contact, CampaignRecipient.parameters, CampaignRecipient.attempt)


class CampaignStore:
    """Campaigns, recipients and preferences of every tenant, on PostgreSQL or SQLite."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    # --- campaigns ---

    async def create(self, new: NewCampaign, recipients: Sequence[NewRecipient], now: datetime) -> CampaignInfo:
        """The campaign and every recipient, queued, in one transaction."""
        campaign_id = secrets.token_hex(6)
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(Campaign).values(
                    id=campaign_id,
                    tenant=new.tenant,
                    name=new.name,
                    template_name=new.template_name,
                    template_language=new.template_language,
                    template_category=new.template_category,
                    status=CAMPAIGN_SCHEDULED,
                    start_at=new.start_at,
                    next_at=new.start_at,
                    created_at=now,
                    updated_at=now,
                    created_by=new.created_by,
                )
            )
            for chunk in _chunks(recipients):
                rows = [
                    {
                        "campaign_id": campaign_id,
                        "contact": recipient.contact,
                        "tenant": new.tenant,
                        "parameters": recipient.parameters,
                        "status": QUEUED,
                        "attempt": 0,
                        "updated_at": now,
                    }
                    for recipient in chunk
                ]
                await conn.execute(insert(CampaignRecipient), rows)
            row = (await conn.execute(select(Campaign).where(Campaign.id == campaign_id))).one()
        return _info(row)

    async def get(self, campaign_id: str) -> CampaignInfo | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(Campaign).where(Campaign.id == campaign_id))).first()
        return None if row is None else _info(row)

    async def list_campaigns(self, tenant: str | None, limit: int) -> list[Listed]:
        """Campaigns, the newest first, with their recipients counted by state."""
        query = select(Campaign).order_by(Campaign.created_at.desc(), Campaign.id).limit(limit)
        if tenant is not None:
            query = query.where(Campaign.tenant == tenant)
        async with self._engine.connect() as conn:
            listed = {row.id: Listed(_info(row)) for row in await conn.execute(query)}
            if listed:
                counts = await conn.execute(
                    select(CampaignRecipient.campaign_id, CampaignRecipient.status, func.count())
                    .where(CampaignRecipient.campaign_id.in_(list(listed)))
                    .group_by(CampaignRecipient.campaign_id, CampaignRecipient.status)
                )
                for campaign_id, status, count in counts:
                    listed[campaign_id].by_status[status] = int(count)
        return list(listed.values())

    async def progress(self, campaign_id: str, now: datetime) -> Progress | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(Campaign).where(Campaign.id == campaign_id))).first()
            if row is None:
                return None
            recipients = CampaignRecipient.campaign_id == campaign_id
            by_status = dict.fromkeys(RECIPIENT_STATES, 0)
            for status, count in await conn.execute(
                select(CampaignRecipient.status, func.count()).where(recipients).group_by(CampaignRecipient.status)
            ):
                by_status[status] = int(count)
            grouped = await conn.execute(
                select(
                    CampaignRecipient.status,
                    CampaignRecipient.reason,
                    CampaignRecipient.error_code,
                    func.max(CampaignRecipient.error_title),
                    func.count(),
                )
                .where(recipients, CampaignRecipient.status.in_((FAILED, SKIPPED)))
                .group_by(CampaignRecipient.status, CampaignRecipient.reason, CampaignRecipient.error_code)
            )
            outcomes = sorted(
                (
                    Outcome(status, reason or "", code, title, int(count))
                    for status, reason, code, title, count in grouped
                ),
                key=lambda outcome: (-outcome.count, outcome.status, outcome.reason),
            )
            deferred, next_retry_at = (
                await conn.execute(
                    select(func.count(), func.min(CampaignRecipient.not_before)).where(
                        recipients, CampaignRecipient.status == QUEUED, CampaignRecipient.not_before > now
                    )
                )
            ).one()
        return Progress(_info(row), by_status, outcomes, int(deferred), next_retry_at)

    async def cancel(self, campaign_id: str, now: datetime) -> CampaignInfo | None:
        """Stop a campaign: nothing more is sent; messages already on their way still report. None: no such campaign."""
        async with self._engine.begin() as conn:
            cancelled = await conn.execute(
                update(Campaign)
                .where(Campaign.id == campaign_id, Campaign.status.in_(CAMPAIGN_ACTIVE))
                .values(status=CAMPAIGN_CANCELLED, reason="cancelled", next_at=None, updated_at=now)
            )
            row = (await conn.execute(select(Campaign).where(Campaign.id == campaign_id))).first()
            if row is None:
                return None
            if not cancelled.rowcount:
                raise CampaignError(f"campaign {campaign_id} has already ended ({row.status}): nothing to cancel")
            await conn.execute(
                update(CampaignRecipient)
                .where(CampaignRecipient.campaign_id == campaign_id, CampaignRecipient.status == QUEUED)
                .values(status=SKIPPED, reason="cancelled", updated_at=now)
            )
        return _info(row)

    async def set_state(
        self, campaign_id: str, status: str, reason: str | None, next_at: datetime | None, now: datetime
    ) -> bool:
        """Move an active campaign on (an ended one stays ended); whether it was still active."""
        async with self._engine.begin() as conn:
            changed = await conn.execute(
                update(Campaign)
                .where(Campaign.id == campaign_id, Campaign.status.in_(CAMPAIGN_ACTIVE))
                .values(status=status, reason=reason, next_at=next_at, updated_at=now)
            )
        return bool(changed.rowcount)

    async def fail(self, campaign_id: str, reason: str, now: datetime) -> bool:
        """End the campaign as failed (the template was refused); whether it was still active."""
        return await self.set_state(campaign_id, CAMPAIGN_FAILED, reason, None, now)

    async def finish_if_settled(self, campaign_id: str, now: datetime) -> bool:
        """Mark the campaign done once no recipient is queued or sending; whether this call did it."""
        async with self._engine.begin() as conn:
            return await _finish_if_settled(conn, campaign_id, now)

    async def due(self, now: datetime, limit: int = 100) -> list[str]:
        """Active campaigns whose next slice is due: the scheduler's safety net beside the timers."""
        async with self._engine.connect() as conn:
            found = await conn.scalars(
                select(Campaign.id)
                .where(Campaign.status.in_(CAMPAIGN_ACTIVE), Campaign.next_at <= now)
                .order_by(Campaign.next_at)
                .limit(limit)
            )
            return list(found)

    # --- the runner's recipients ---

    async def claim(self, campaign_id: str, now: datetime, limit: int) -> list[Claimed]:
        """Move up to `limit` queued recipients whose time has come to sending, and return them.

        A recipient another replica holds is passed over, and one it claimed first is no longer
        queued: two replicas never get the same recipient.
        """
        ready = and_(
            CampaignRecipient.campaign_id == campaign_id,
            CampaignRecipient.status == QUEUED,
            or_(CampaignRecipient.not_before.is_(None), CampaignRecipient.not_before <= now),
        )
        command = (
            f"{COMMAND_PREFIX}:"
            + CampaignRecipient.campaign_id
            + ":"
            + CampaignRecipient.contact
            + ":"
            + cast(CampaignRecipient.attempt, String)
        )
        return await self._hold(
            campaign_id, ready, limit, {"status": SENDING, "command_id": command, "updated_at": now}
        )

    async def reclaim_stale(self, campaign_id: str, before: datetime, now: datetime, limit: int) -> list[Claimed]:
        """Recipients left sending since before `before` (a killed runner, a lost result), held again from now."""
        stale = and_(
            CampaignRecipient.campaign_id == campaign_id,
            CampaignRecipient.status == SENDING,
            CampaignRecipient.updated_at < before,
        )
        return await self._hold(campaign_id, stale, limit, {"updated_at": now})

    async def _hold(
        self, campaign_id: str, which: ColumnElement[bool], limit: int, values: dict[str, Any]
    ) -> list[Claimed]:
        """Change up to `limit` recipients matching `which`, in contact order; those this call changed.

        Two statements, not an UPDATE with a LIMIT subquery: PostgreSQL may run such a subquery
        again for each row, and with SKIP LOCKED each run finds other rows.
        """
        async with self._engine.begin() as conn:
            contacts = list(
                await conn.scalars(
                    select(CampaignRecipient.contact)
                    .where(which)
                    .order_by(CampaignRecipient.contact)
                    .limit(limit)
                    # PostgreSQL: replicas at once take different rows instead of waiting for the same.
                    .with_for_update(skip_locked=True)
                )
            )
            if not contacts:
                return []
            held = await conn.execute(
                update(CampaignRecipient)
                .where(which, CampaignRecipient.contact.in_(contacts))
                .values(**values)
                .returning(*_CLAIMED)
            )
            found = {row.contact: Claimed(row.contact, dict(row.parameters), row.attempt) for row in held}
        return [found[contact] for contact in contacts if contact in found]

    async def requeue(self, campaign_id: str, contacts: Sequence[str], now: datetime) -> None:
        """Put claimed recipients back in the queue (the messaging limit is reached): their turn comes later."""
        async with self._engine.begin() as conn:
            for chunk in _chunks(contacts):
                await conn.execute(
                    update(CampaignRecipient)
                    .where(
                        CampaignRecipient.campaign_id == campaign_id,
                        CampaignRecipient.status == SENDING,
                        CampaignRecipient.contact.in_(chunk),
                    )
                    .values(status=QUEUED, updated_at=now)
                )

    async def skip(self, campaign_id: str, reasons: dict[str, str], now: datetime) -> int:
        """Claimed recipients never messaged, with why (opted out, ...); how many were skipped."""
        by_reason: dict[str, list[str]] = defaultdict(list)
        for contact, reason in reasons.items():
            by_reason[reason].append(contact)
        skipped = 0
        async with self._engine.begin() as conn:
            for reason, contacts in by_reason.items():
                for chunk in _chunks(contacts):
                    result = await conn.execute(
                        update(CampaignRecipient)
                        .where(
                            CampaignRecipient.campaign_id == campaign_id,
                            CampaignRecipient.status == SENDING,
                            CampaignRecipient.contact.in_(chunk),
                        )
                        .values(status=SKIPPED, reason=reason, updated_at=now)
                    )
                    skipped += result.rowcount
        return skipped

    async def pending(self, campaign_id: str, now: datetime) -> Pending:
        recipients = CampaignRecipient.campaign_id == campaign_id
        async with self._engine.connect() as conn:
            ready = await conn.scalar(
                select(
                    exists().where(
                        recipients,
                        CampaignRecipient.status == QUEUED,
                        or_(CampaignRecipient.not_before.is_(None), CampaignRecipient.not_before <= now),
                    )
                )
            )
            next_retry_at = await conn.scalar(
                select(func.min(CampaignRecipient.not_before)).where(
                    recipients, CampaignRecipient.status == QUEUED, CampaignRecipient.not_before > now
                )
            )
            sending = await conn.scalar(select(func.count()).where(recipients, CampaignRecipient.status == SENDING))
        return Pending(bool(ready), next_retry_at, int(sending or 0))

    # --- what happened to the messages ---

    async def recipient_by_wamid(self, tenant: str, wamid: str) -> Recipient | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        CampaignRecipient.campaign_id,
                        CampaignRecipient.contact,
                        CampaignRecipient.attempt,
                        CampaignRecipient.status,
                        Campaign.template_category,
                    )
                    .join(Campaign, Campaign.id == CampaignRecipient.campaign_id)
                    .where(CampaignRecipient.tenant == tenant, CampaignRecipient.wamid == wamid)
                )
            ).first()
        return None if row is None else Recipient(row[0], row[1], row[2], row[3], row[4])

    async def awaits_result(self, tenant: str, contact: str) -> bool:
        """A campaign message to the contact has no send result yet: a status may be its, arriving first."""
        async with self._engine.connect() as conn:
            return bool(
                await conn.scalar(
                    select(
                        exists().where(
                            CampaignRecipient.tenant == tenant,
                            CampaignRecipient.contact == contact,
                            CampaignRecipient.status == SENDING,
                        )
                    )
                )
            )

    async def settle(
        self,
        campaign_id: str,
        contact: str,
        attempt: int,
        status: str,
        now: datetime,
        *,
        wamid: str | None = None,
        reason: str | None = None,
        error_code: int | None = None,
        error_title: str | None = None,
    ) -> bool:
        """Move one try of a recipient to `status`, only forward; whether it moved (False: a duplicate or late).

        The last recipient to settle ends the campaign (done).
        """
        values: dict[str, Any] = {"status": status, "updated_at": now}
        if wamid:
            values["wamid"] = wamid
        if status in (FAILED, SKIPPED):
            values.update(reason=reason, error_code=error_code, error_title=error_title)
        async with self._engine.begin() as conn:
            moved = await conn.execute(
                update(CampaignRecipient)
                .where(
                    CampaignRecipient.campaign_id == campaign_id,
                    CampaignRecipient.contact == contact,
                    CampaignRecipient.attempt == attempt,
                    CampaignRecipient.status.in_(_before(status)),
                )
                .values(**values)
            )
            # In the same transaction: one commit per result, as results come by the thousand.
            if moved.rowcount:
                await _finish_if_settled(conn, campaign_id, now)
        return bool(moved.rowcount)

    async def defer(
        self, campaign_id: str, contact: str, attempt: int, not_before: datetime, error_code: int, now: datetime
    ) -> bool:
        """Queue the recipient again for a new try after `not_before` (131049: too many marketing messages lately)."""
        async with self._engine.begin() as conn:
            deferred = await conn.execute(
                update(CampaignRecipient)
                .where(
                    CampaignRecipient.campaign_id == campaign_id,
                    CampaignRecipient.contact == contact,
                    CampaignRecipient.attempt == attempt,
                    CampaignRecipient.status.in_((SENDING, SENT)),
                )
                .values(
                    status=QUEUED,
                    attempt=attempt + 1,
                    not_before=not_before,
                    reason="marketing_limited",
                    error_code=error_code,
                    command_id=None,
                    wamid=None,
                    updated_at=now,
                )
            )
        return bool(deferred.rowcount)

    # --- preferences ---

    async def preferences(self, tenant: str, contacts: Sequence[str]) -> dict[str, Preference]:
        found: dict[str, Preference] = {}
        async with self._engine.connect() as conn:
            for chunk in _chunks(contacts):
                rows = await conn.execute(
                    select(ContactPreference).where(
                        ContactPreference.tenant == tenant, ContactPreference.contact.in_(chunk)
                    )
                )
                for row in rows:
                    found[row.contact] = Preference(
                        row.tenant, row.contact, row.opted_out_at, row.opt_out_source, row.marketing_stopped_at
                    )
        return found

    async def opt_out(self, tenant: str, contact: str, source: str, at: datetime) -> bool:
        """No campaign messages the contact again; whether they were opted in until now."""
        async with self._engine.begin() as conn:
            return await record_opt_out(conn, tenant, contact, source, at)

    async def opt_in(self, tenant: str, contact: str, at: datetime) -> bool:
        """Campaigns may message the contact again; whether they were opted out."""
        async with self._engine.begin() as conn:
            changed = await conn.execute(
                update(ContactPreference)
                .where(
                    ContactPreference.tenant == tenant,
                    ContactPreference.contact == contact,
                    ContactPreference.opted_out_at.is_not(None),
                )
                .values(opted_out_at=None, opt_out_source=None, updated_at=at)
            )
        return bool(changed.rowcount)

    async def stop_marketing(self, tenant: str, contact: str, at: datetime) -> None:
        """Meta said 131050: no marketing template reaches the contact until they write."""
        async with self._engine.begin() as conn:
            upsert = _upsert(conn)(ContactPreference).values(
                tenant=tenant, contact=contact, marketing_stopped_at=at, updated_at=at
            )
            await conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=[ContactPreference.tenant, ContactPreference.contact],
                    set_={"marketing_stopped_at": upsert.excluded.marketing_stopped_at, "updated_at": at},
                )
            )


async def record_opt_out(conn: AsyncConnection, tenant: str, contact: str, source: str, at: datetime) -> bool:
    """In the caller's transaction: the contact opted out (an earlier opt-out keeps its time and source)."""
    upsert = _upsert(conn)(ContactPreference).values(
        tenant=tenant, contact=contact, opted_out_at=at, opt_out_source=source, updated_at=at
    )
    changed = await conn.execute(
        upsert.on_conflict_do_update(
            index_elements=[ContactPreference.tenant, ContactPreference.contact],
            set_={"opted_out_at": at, "opt_out_source": source, "updated_at": at},
            where=ContactPreference.opted_out_at.is_(None),
        )
    )
    return bool(changed.rowcount)


async def delete_ended_campaigns(conn: AsyncConnection, tenant: str, ended_before: datetime) -> dict[str, int]:
    """In the caller's transaction: the tenant's campaigns that ended before the cut-off and their recipients.

    The recipients go first and explicitly, so they are counted (the cascade would not say how many).
    """
    ended = and_(
        Campaign.tenant == tenant,
        Campaign.status.in_((CAMPAIGN_DONE, CAMPAIGN_CANCELLED, CAMPAIGN_FAILED)),
        Campaign.updated_at < ended_before,
    )
    ids = select(Campaign.id).where(ended)
    recipients = await conn.execute(delete(CampaignRecipient).where(CampaignRecipient.campaign_id.in_(ids)))
    campaigns = await conn.execute(delete(Campaign).where(ended))
    return {CampaignRecipient.__tablename__: recipients.rowcount, Campaign.__tablename__: campaigns.rowcount}


async def erase_contact_campaign_rows(conn: AsyncConnection, tenant: str, contact: str) -> dict[str, int]:
    """In the caller's transaction: the contact's recipient rows in every campaign, and their preferences."""
    recipients = await conn.execute(
        delete(CampaignRecipient).where(CampaignRecipient.tenant == tenant, CampaignRecipient.contact == contact)
    )
    preferences = await conn.execute(
        delete(ContactPreference).where(ContactPreference.tenant == tenant, ContactPreference.contact == contact)
    )
    return {
        CampaignRecipient.__tablename__: recipients.rowcount,
        ContactPreference.__tablename__: preferences.rowcount,
    }


async def _finish_if_settled(conn: AsyncConnection, campaign_id: str, now: datetime) -> bool:
    unsettled = exists().where(
        CampaignRecipient.campaign_id == campaign_id, CampaignRecipient.status.in_((QUEUED, SENDING))
    )
    done = await conn.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.status.in_(CAMPAIGN_ACTIVE), ~unsettled)
        .values(status=CAMPAIGN_DONE, reason=None, next_at=None, updated_at=now)
    )
    return bool(done.rowcount)


def _upsert(conn: AsyncConnection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def _before(status: str) -> tuple[str, ...]:
    """The states a recipient may reach `status` from: delivery moves forward; a failure ends a try in flight."""
    if status in DELIVERY_ORDER:
        return DELIVERY_ORDER[: DELIVERY_ORDER.index(status)]
    # failed or skipped: a message in flight or only sent (Meta reports some failures after "sent").
    return (SENDING, SENT)
