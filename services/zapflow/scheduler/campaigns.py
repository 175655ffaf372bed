"""Campaigns: one approved template to a list of a tenant's customers, inside WhatsApp's rules.

The recipient list (a CSV file, or JSON through the admin API) becomes queued recipients. The
runner sends them one slice at a time: `CampaignRunner.advance(campaign, now)` publishes what
the campaign's share of the number's throughput allows in `SLICE` and returns when it wants to be
called again (None once the campaign has ended); timers and the scheduler's tick call it.

Per recipient, in order:

1. it is claimed: queued -> sending, in the store, in one statement (two replicas never claim
   the same one);
2. a customer who opted out is skipped, and one who stopped marketing at Meta (131050) is
   skipped by marketing campaigns;
3. a customer outside their 24-hour window costs one place of the messaging limit (the tier's
   unique customers in a moving 24 hours, a Redis sorted set shared by every replica; one counted
   already costs nothing); when the tier is full, the slice's other customers who need no new
   place still go, the others go back to the queue, and the campaign waits and says until when;
4. the command is published with the id `cp:<campaign>:<contact>:<attempt>`.

A runner killed between 1 and 4 leaves recipients in sending; the next slice finds them (untouched
for `RESEND_AFTER`), and publishes those egress has no trace of under the same id: JetStream's
dedup window and egress's idempotency key make it one send. Their send results and Meta's
delivery statuses come back through `CampaignResults`.

## The CSV

The first row names the columns: `phone`, then one column per template parameter.

    phone,body.1,body.2,header.1,button.0
    +55 11 98765-4321,Ana,20%,Black Friday,promo-ana

- `phone`: E.164 (+5511987654321) or its digits; spaces, dots, dashes and parentheses are ignored.
- `body.1` ... `body.N`: the body's text parameters, in order, without gaps.
- `header.1`: the header's text parameter (at most 60 characters); or `header.image`,
  `header.video`, `header.document`: the https URL of the header's media.
- `button.<index>`: the payload of the quick-reply button at that index (from 0);
  `button.<index>.url`: the variable suffix of the URL button at that index.

Commas or semicolons separate the fields (a spreadsheet in Portuguese or Spanish saves with
semicolons). Every row has every column, no value is empty, and a phone appears once; every
problem is reported with its line number, and nothing is created while there is one.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from zapflow.gateway.graph import MARKETING_LIMITED, MARKETING_STOPPED, TEMPLATE_CODES, Outcome
from zapflow.platform import bus, catalogue, keys, metrics
from zapflow.platform.connections import Connections
from zapflow.platform.logging import get_logger
from zapflow.privacy.erasure import ErasureError, normalise_phone
from zapflow.store.campaigns import (
    DELIVERED,
    FAILED,
    READ,
    SENT,
    SKIPPED,
    CampaignInfo,
    CampaignStore,
    Claimed,
    NewCampaign,
    NewRecipient,
    parse_command_id,
)
from zapflow.store.models import CAMPAIGN_RUNNING, CAMPAIGN_WAITING
from zapflow.tenants.model import BotTenant, TenantSpec
from zapflow.tenants.registry import TenantRegistry
from zapflow.v1 import inbound_pb2
from zapflow.v1 import outbound_pb2 as pb
from zapflow.whatsapp import window

log = get_logger(__name__)

# One slice of sending: what `advance` publishes at most, at the campaign's rate.
SLICE = timedelta(seconds=2)
# A recipient still sending after this long lost its runner (or its result): published again.
RESEND_AFTER = timedelta(seconds=60)
# Egress's "calling" state older than this (wall clock) was a process that died mid-call: uncertain.
UNCERTAIN_AFTER_S = 600.0
# A campaign whose tenant is missing from the registry looks again after this long.
TENANT_RETRY = timedelta(minutes=1)
# 131049: Meta holds marketing messages to a customer who got many lately; try a day later.
MARKETING_RETRY = timedelta(hours=24)
# The messaging limit counts unique customers reached outside their window in a moving 24 hours.
LIMIT_PERIOD_S = 86_400
# A status that may belong to a campaign message whose send result is not recorded yet waits
# this many deliveries for it, 1, 2, ... 5 seconds apart (about a minute in all; fewer than the
# consumer's attempts, so that it is dropped rather than dead-lettered).
STATUS_WAITS = 15
STATUS_WAIT_MAX_S = 5

MAX_RECIPIENTS = 100_000
MAX_PROBLEMS_SHOWN = 20
PHONE_COLUMN = "phone"
BODY_TEXT_CHARS = 1024
HEADER_TEXT_CHARS = 60
PARAMETER_CHARS = 1024
MEDIA_HEADERS = ("image", "video", "document")
_PARAMETER = re.compile(
    r"^(?:body\.(?P<body>[1-9][0-9]?)|header\.(?P<header>1|image|video|document)|button\.(?P<button>[0-9])(?P<url>\.url)?)$"
)
_HTTPS_URL = re.compile(r"^https://\S+$")
# As WhatsApp Manager names templates, and Meta's language codes (en, pt_BR, zh_HK).
TEMPLATE_NAME = re.compile(r"^[a-z0-9_]{1,512}$")
LANGUAGE = re.compile(r"^[a-z]{2,3}(_[A-Z]{2,4})?$")
CATEGORIES = ("marketing", "utility", "authentication")
NAME_CHARS = 200
# A start time this little in the past is "now" (the clocks of the caller and the server differ).
START_SLACK = timedelta(minutes=5)

# Reserve one customer's place in the tenant's moving 24 hours. ARGV: now, period, limit, contact.
# Returns "" when the customer may be messaged (already counted, or counted now), else when the
# oldest place frees up (epoch seconds, a millisecond late rather than a rounding early).
_RESERVE = """
local now = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
if not redis.call('ZSCORE', KEYS[1], ARGV[4]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return string.format('%.6f', tonumber(oldest[2]) + period + 0.001)
end
redis.call('ZADD', KEYS[1], 'GT', now, ARGV[4])
redis.call('EXPIRE', KEYS[1], period)
return ''
"""


# --- the recipient list ---


class CampaignInputError(ValueError):
    """The recipient list cannot be used; `problems` says where and why, one entry each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        shown = "; ".join(self.problems[:MAX_PROBLEMS_SHOWN])
        more = len(self.problems) - MAX_PROBLEMS_SHOWN
        super().__init__(shown + (f"; and {more} more problems" if more > 0 else ""))


def parse_csv(text: str) -> list[NewRecipient]:
    """The recipients of a CSV file (see the module's docstring); CampaignInputError lists every problem."""
    lines = text.removeprefix("\ufeff").splitlines()
    header_line = next((line for line in lines if line.strip()), "")
    if not header_line:
        raise CampaignInputError(["the file is empty: expected a header row (phone, then parameter columns)"])
    delimiter = ";" if header_line.count(";") > header_line.count(",") else ","
    reader = csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter)
    try:
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except csv.Error as error:
        raise CampaignInputError([f"line {reader.line_num}: {error}"]) from None
    (header_number, header), body = rows[0], rows[1:]
    columns = [cell.strip() for cell in header]
    problems = _column_problems(columns, f"line {header_number}")
    if problems:
        raise CampaignInputError(problems)
    entries: list[_Entry] = []
    for number, row in body:
        where = f"line {number}"
        if len(row) != len(columns):
            problem = f"{len(row)} fields, the header has {len(columns)} ({', '.join(columns)})"
            entries.append(_Entry(where, "", {}, problem))
            continue
        cells = [cell.strip() for cell in row]
        entries.append(_Entry(where, cells[0], dict(zip(columns[1:], cells[1:], strict=True))))
    return _recipients(entries)


def parse_entries(entries: Sequence[tuple[str, dict[str, str]]]) -> list[NewRecipient]:
    """Recipients given as (phone, parameters), as the admin API's JSON has them; all with the same parameters."""
    if not entries:
        raise CampaignInputError(["no recipients"])
    columns = sorted(entries[0][1])
    problems = _column_problems([PHONE_COLUMN, *columns], "recipients[0].parameters")
    if problems:
        raise CampaignInputError(problems)
    labelled: list[_Entry] = []
    for index, (phone, parameters) in enumerate(entries):
        where = f"recipients[{index}]"
        if sorted(parameters) != columns:
            problem = (
                f"parameters {', '.join(sorted(parameters)) or 'none'}; every recipient needs the first one's: "
                f"{', '.join(columns) or 'none'}"
            )
            labelled.append(_Entry(where, phone, {}, problem))
            continue
        labelled.append(_Entry(where, phone, {name: value.strip() for name, value in parameters.items()}))
    return _recipients(labelled)


def _column_problems(columns: Sequence[str], where: str) -> list[str]:
    if not columns or columns[0].lower() != PHONE_COLUMN:
        return [f"{where}: the first column must be {PHONE_COLUMN}, not {columns[0] if columns else 'nothing'!r}"]
    problems: list[str] = []
    parameters = columns[1:]
    for name in parameters:
        if not _PARAMETER.match(name):
            problems.append(
                f"{where}: unknown column {name!r} (expected body.1, body.2 ..., header.1 or header.image|video|"
                "document, button.0 or button.0.url)"
            )
    duplicated = sorted({name for name in parameters if parameters.count(name) > 1})
    if duplicated:
        problems.append(f"{where}: columns named twice: {', '.join(duplicated)}")
    bodies = sorted(int(match["body"]) for name in parameters if (match := _PARAMETER.match(name)) and match["body"])
    if bodies != list(range(1, len(bodies) + 1)):
        problems.append(f"{where}: body parameters must be body.1 to body.{len(bodies)} without gaps")
    headers = [name for name in parameters if name.startswith("header.")]
    if len(headers) > 1:
        problems.append(f"{where}: a template has one header parameter, not {', '.join(headers)}")
    buttons = [match["button"] for name in parameters if (match := _PARAMETER.match(name)) and match["button"]]
    if len(buttons) != len(set(buttons)):
        problems.append(f"{where}: a button index has both a payload and a URL column")
    return problems


@dataclass(frozen=True)
class _Entry:
    """One recipient as given, with where it was; `problem`: its shape is already known to be wrong."""

    where: str
    phone: str
    parameters: dict[str, str]
    problem: str | None = None


def _recipients(entries: Iterable[_Entry]) -> list[NewRecipient]:
    """The recipients, once every entry is right; else CampaignInputError with each problem, in order."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    recipients: list[NewRecipient] = []
    for entry in entries:
        if entry.problem is not None:
            problems.append(f"{entry.where}: {entry.problem}")
            continue
        try:
            contact = normalise_phone(entry.phone)
        except ErasureError as error:
            problems.append(f"{entry.where}: {error}")
            continue
        if contact in seen:
            problems.append(f"{entry.where}: {entry.phone} is already on {seen[contact]}")
            continue
        seen[contact] = entry.where
        problems.extend(f"{entry.where}: {problem}" for problem in _value_problems(entry.parameters))
        recipients.append(NewRecipient(contact, entry.parameters))
    if not recipients and not problems:
        problems.append("no recipients: the list has a header and nothing else")
    if len(recipients) > MAX_RECIPIENTS:
        problems.append(f"{len(recipients):,} recipients; a campaign has at most {MAX_RECIPIENTS:,}")
    if problems:
        raise CampaignInputError(problems)
    return recipients


def _value_problems(parameters: dict[str, str]) -> Iterable[str]:
    for name, value in parameters.items():
        if not value:
            yield f"{name} is empty"
        elif name == "header.1" and len(value) > HEADER_TEXT_CHARS:
            yield f"{name} has {len(value)} characters; a header has at most {HEADER_TEXT_CHARS}"
        elif name.removeprefix("header.") in MEDIA_HEADERS and not _HTTPS_URL.match(value):
            yield f"{name} must be an https URL"
        elif len(value) > (BODY_TEXT_CHARS if name.startswith("body.") else PARAMETER_CHARS):
            yield f"{name} has {len(value)} characters, more than a template allows"


def new_campaign(
    tenant: str,
    template: str,
    language: str,
    category: str,
    name: str | None,
    start_at: datetime | None,
    created_by: str,
    now: datetime,
) -> NewCampaign:
    """A campaign's settings, checked as Meta and the store take them; CampaignInputError lists every problem."""
    problems: list[str] = []
    if not TEMPLATE_NAME.match(template):
        problems.append(f"template {template!r}: a template name is lowercase letters, digits and _")
    if not LANGUAGE.match(language):
        problems.append(f"language {language!r}: expected a template language code such as pt_BR, es or en_US")
    if category not in CATEGORIES:
        problems.append(f"category {category!r}: expected one of {', '.join(CATEGORIES)}")
    if name is not None and not 0 < len(name.strip()) <= NAME_CHARS:
        problems.append(f"name: 1 to {NAME_CHARS} characters")
    if start_at is not None and start_at.tzinfo is None:
        problems.append("start time: give its time zone, e.g. 2026-12-01T09:00:00-03:00 or ...Z")
    elif start_at is not None and start_at < now - START_SLACK:
        problems.append(f"start time {start_at.isoformat()} is in the past")
    if problems:
        raise CampaignInputError(problems)
    return NewCampaign(
        tenant=tenant,
        name=name.strip() if name else f"{template} {now:%Y-%m-%d %H:%M}",
        template_name=template,
        template_language=language,
        template_category=category,
        start_at=max(start_at, now) if start_at is not None else now,
        created_by=created_by,
    )


def template_components(parameters: dict[str, str]) -> list[pb.TemplateComponent]:
    """Meta's components for one recipient's parameters: the header, the body in order, then the buttons."""
    header: list[pb.TemplateComponent] = []
    body: list[tuple[int, str]] = []
    buttons: list[pb.TemplateComponent] = []
    for name, value in parameters.items():
        match = _PARAMETER.match(name)
        if match is None:  # parse_csv and parse_entries let none through
            continue
        if match["body"]:
            body.append((int(match["body"]), value))
        elif match["header"] == "1":
            header.append(
                pb.TemplateComponent(type="header", parameters=[pb.TemplateParameter(type="text", text=value)])
            )
        elif match["header"]:
            media = pb.TemplateParameter(type=match["header"], link=value)
            header.append(pb.TemplateComponent(type="header", parameters=[media]))
        elif match["url"]:
            parameter = pb.TemplateParameter(type="text", text=value)
            buttons.append(
                pb.TemplateComponent(type="button", sub_type="url", index=int(match["button"]), parameters=[parameter])
            )
        else:
            parameter = pb.TemplateParameter(type="payload", text=value)
            buttons.append(
                pb.TemplateComponent(
                    type="button", sub_type="quick_reply", index=int(match["button"]), parameters=[parameter]
                )
            )
    components = header
    if body:
        texts = [pb.TemplateParameter(type="text", text=value) for _, value in sorted(body)]
        components.append(pb.TemplateComponent(type="body", parameters=texts))
    return components + sorted(buttons, key=lambda button: button.index)


# --- sending ---


def slice_budget(spec: TenantSpec) -> int:
    """Messages one slice may publish: the campaign's share of the number's throughput, for SLICE."""
    per_second = spec.rate_limits.messages_per_second * spec.messaging.campaign_share
    return max(1, int(per_second * SLICE.total_seconds()))


@dataclass(frozen=True)
class _Sent:
    published: int
    # The messaging limit is reached: nothing more goes until then.
    held_until: datetime | None = None


class CampaignRunner:
    """Sends campaigns a slice at a time; any number of replicas may advance the same campaign."""

    def __init__(self, engine: AsyncEngine, js: JetStreamContext, redis: Redis, registry: TenantRegistry) -> None:
        self._store = CampaignStore(engine)
        self._js = js
        self._redis = redis
        self._registry = registry
        self._reserve = redis.register_script(_RESERVE)

    @property
    def store(self) -> CampaignStore:
        return self._store

    @property
    def registry(self) -> TenantRegistry:
        return self._registry

    async def advance(self, campaign_id: str, now: datetime) -> datetime | None:
        """Send the campaign's next slice; when to call again (None: it has ended, or there is no such campaign)."""
        campaign = await self._store.get(campaign_id)
        if campaign is None or not campaign.active:
            return None
        if now < campaign.start_at:
            return campaign.start_at
        tenant = self._registry.by_name(campaign.tenant)
        if tenant is None:
            retry = now + TENANT_RETRY
            reason = f"tenant {campaign.tenant} is not in the registry"
            await self._store.set_state(campaign_id, CAMPAIGN_WAITING, reason, retry, now)
            return retry
        budget = slice_budget(tenant.spec)
        # What a killed runner left sending goes first, then the queue.
        batch = await self._not_at_egress(
            campaign, await self._store.reclaim_stale(campaign_id, now - RESEND_AFTER, now, budget), now
        )
        published = 0
        while True:
            if batch:
                sent = await self._send(campaign, tenant, batch, now)
                published += sent.published
                if sent.held_until is not None:
                    return await self._wait_for_limit(campaign, tenant, sent.held_until, now)
            if published >= budget:
                break
            batch = await self._store.claim(campaign_id, now, budget - published)
            if not batch:
                break
        return await self._next(campaign, now, slice_full=published >= budget)

    async def _send(self, campaign: CampaignInfo, tenant: BotTenant, batch: Sequence[Claimed], now: datetime) -> _Sent:
        preferences = await self._store.preferences(campaign.tenant, [recipient.contact for recipient in batch])
        skipped: dict[str, str] = {}
        for contact, preference in preferences.items():
            if preference.opted_out_at is not None:
                skipped[contact] = "opted_out"
            elif preference.marketing_stopped_at is not None and campaign.template_category == "marketing":
                skipped[contact] = "marketing_stopped"
        if skipped:
            count = await self._store.skip(campaign.id, skipped, now)
            metrics.CAMPAIGN_MESSAGES.labels(campaign.tenant, "skipped").inc(count)
        recipients = [recipient for recipient in batch if recipient.contact not in skipped]
        if not recipients:
            return _Sent(0)
        last_written = await self._redis.mget([keys.ContactKeys(campaign.tenant, r.contact).window for r in recipients])
        limit = tenant.spec.messaging.customers_per_day
        published = 0
        held_until: datetime | None = None
        no_place: list[str] = []
        for recipient, last in zip(recipients, last_written, strict=True):
            closes_at = window.closes_at(datetime.fromtimestamp(float(last), UTC)) if last is not None else None
            if limit is not None and not (closes_at is not None and now < closes_at):
                frees_at = await self._reserve_place(campaign.tenant, limit, recipient.contact, now)
                if frees_at is not None:
                    # The tier is full; the rest of the slice still goes to those who need no new place.
                    held_until = frees_at if held_until is None else min(held_until, frees_at)
                    no_place.append(recipient.contact)
                    continue
            command = self._command(campaign, recipient, closes_at, now)
            await bus.publish(
                self._js, catalogue.outbound_subject(campaign.tenant, recipient.contact), command, command.command_id
            )
            published += 1
        if no_place:
            await self._store.requeue(campaign.id, no_place, now)
        metrics.CAMPAIGN_MESSAGES.labels(campaign.tenant, "published").inc(published)
        return _Sent(published, held_until)

    def _command(
        self, campaign: CampaignInfo, recipient: Claimed, closes_at: datetime | None, now: datetime
    ) -> pb.OutboundCommand:
        command = pb.OutboundCommand(
            command_id=recipient.command_id(campaign.id),
            tenant=campaign.tenant,
            contact=recipient.contact,
            template=pb.OutTemplate(
                name=campaign.template_name,
                language=campaign.template_language,
                category=campaign.template_category,
                components=template_components(recipient.parameters),
            ),
        )
        command.created_at.FromDatetime(now)
        if closes_at is not None:
            command.window_closes_at.FromDatetime(closes_at)
        return command

    async def _reserve_place(self, tenant: str, limit: int, contact: str, now: datetime) -> datetime | None:
        """Count the customer in the tenant's moving 24 hours: None, they may be messaged; else when one frees up."""
        frees_at = await self._reserve(
            keys=[keys.reached_key(tenant)], args=[now.timestamp(), LIMIT_PERIOD_S, limit, contact]
        )
        return datetime.fromtimestamp(float(frees_at), UTC) if frees_at else None

    async def _not_at_egress(self, campaign: CampaignInfo, stale: Sequence[Claimed], now: datetime) -> list[Claimed]:
        """Of recipients left sending, those egress never saw (to publish again); the others settle from its state."""
        if not stale:
            return []
        values = await self._redis.mget([keys.command_key(campaign.tenant, r.command_id(campaign.id)) for r in stale])
        unseen: list[Claimed] = []
        for recipient, state in zip(stale, (None if value is None else str(value) for value in values), strict=True):
            if state is None:
                unseen.append(recipient)
            elif state.startswith("sent:"):  # its result is still on its way
                await self._store.settle(
                    campaign.id, recipient.contact, recipient.attempt, SENT, now, wamid=state.removeprefix("sent:")
                )
            elif (
                state.startswith("calling:") and time.time() - float(state.removeprefix("calling:")) > UNCERTAIN_AFTER_S
            ):
                # Egress died during the Graph API call and will not send it again (at most once).
                await self._store.settle(
                    campaign.id,
                    recipient.contact,
                    recipient.attempt,
                    FAILED,
                    now,
                    reason=Outcome.UNCERTAIN.value,
                    error_title="the send may have reached Meta; not sent again",
                )
            # failed:<code>, or a call under way: its result is on the bus and says what happened.
        return unseen

    async def _wait_for_limit(
        self, campaign: CampaignInfo, tenant: BotTenant, held_until: datetime, now: datetime
    ) -> datetime | None:
        limit = tenant.spec.messaging.messaging_limit
        reason = f"messaging limit {limit} reached; next customer can be reached at {held_until:%Y-%m-%d %H:%M:%S} UTC"
        if not await self._store.set_state(campaign.id, CAMPAIGN_WAITING, reason, held_until, now):
            return None
        log.info("campaign waits for the messaging limit", tenant=campaign.tenant, campaign=campaign.id)
        return held_until

    async def _next(self, campaign: CampaignInfo, now: datetime, slice_full: bool) -> datetime | None:
        pending = await self._store.pending(campaign.id, now)
        if slice_full or pending.ready:
            next_at = now + SLICE
        else:
            candidates = [pending.next_retry_at] if pending.next_retry_at is not None else []
            if pending.sending:  # results are on their way; look for lost ones later
                candidates.append(now + RESEND_AFTER)
            if not candidates:
                await self._store.finish_if_settled(campaign.id, now)
                return None
            next_at = min(candidates)
        if not await self._store.set_state(campaign.id, CAMPAIGN_RUNNING, None, next_at, now):
            return None  # cancelled or failed meanwhile
        return next_at


# --- results and statuses ---


def _refusal(code: int) -> str:
    """What a Meta error code means for a campaign message."""
    if code == MARKETING_STOPPED:
        return Outcome.MARKETING_STOPPED.value
    if code == MARKETING_LIMITED:
        return Outcome.MARKETING_LIMITED.value
    if code in TEMPLATE_CODES:
        return Outcome.TEMPLATE_REJECTED.value
    return Outcome.FAILED.value


# The recipient's reason when egress did not send a command because a person had the conversation.
HELD_FOR_HUMAN = "human"


class CampaignResults:
    """Applies send results (`cp:` commands only) and delivery statuses to campaign recipients."""

    def __init__(self, store: CampaignStore) -> None:
        self._store = store

    async def start(self, connections: Connections) -> None:
        await connections.consume(catalogue.CAMPAIGN_RESULTS, pb.OutboundResult, self.on_result)
        await connections.consume(catalogue.CAMPAIGN_STATUSES, inbound_pb2.StatusUpdate, self.on_status)

    async def on_result(self, result: pb.OutboundResult, _: Msg | None = None) -> None:
        """What egress made of one command; every other producer's results are not a campaign's."""
        parsed = parse_command_id(result.command_id)
        if parsed is None:
            return
        campaign_id, contact, attempt = parsed
        at = result.at.ToDatetime(UTC) if result.HasField("at") else datetime.now(UTC)
        if result.result == Outcome.SENT:
            moved = await self._store.settle(campaign_id, contact, attempt, SENT, at, wamid=result.wamid)
            self._count(result.tenant, SENT, moved)
        elif result.result == "skipped":
            moved = await self._store.settle(
                campaign_id, contact, attempt, SKIPPED, at, reason=HELD_FOR_HUMAN, error_title=result.error_title
            )
            self._count(result.tenant, SKIPPED, moved)
        else:  # failed, window_closed, marketing_stopped, marketing_limited, template_rejected
            refusal = result.result or Outcome.FAILED.value
            await self._refused(
                result.tenant, campaign_id, contact, attempt, refusal, result.error_code, result.error_title, at
            )

    async def on_status(self, status: inbound_pb2.StatusUpdate, msg: Msg | None = None) -> None:
        """A delivery status of one of Meta's messages; a campaign's moves its recipient forward."""
        state = "read" if status.status == "played" else status.status
        if state not in (SENT, DELIVERED, READ, FAILED):
            return
        # Asked first: a send result applied between the two reads then shows in the second.
        awaiting = await self._store.awaits_result(status.tenant, status.contact)
        recipient = await self._store.recipient_by_wamid(status.tenant, status.wamid)
        if recipient is None:
            delivered = msg.metadata.num_delivered if msg is not None else STATUS_WAITS
            if awaiting and delivered < STATUS_WAITS:
                # Longer each time: the results' backlog may take a while after a large slice.
                delay = float(min(delivered, STATUS_WAIT_MAX_S))
                raise bus.RetryLater("the status may be a campaign message's whose send result is not in yet", delay)
            return
        at = status.at.ToDatetime(UTC) if status.HasField("at") else datetime.now(UTC)
        campaign_id, contact, attempt = recipient.campaign_id, recipient.contact, recipient.attempt
        if state == FAILED:
            error = status.errors[0] if status.errors else inbound_pb2.StatusError()
            refusal = _refusal(error.code)
            await self._refused(status.tenant, campaign_id, contact, attempt, refusal, error.code, error.title, at)
        else:
            self._count(status.tenant, state, await self._store.settle(campaign_id, contact, attempt, state, at))

    async def _refused(
        self,
        tenant: str,
        campaign_id: str,
        contact: str,
        attempt: int,
        refusal: str,
        code: int,
        title: str,
        at: datetime,
    ) -> None:
        if refusal == Outcome.MARKETING_LIMITED:
            moved = await self._store.defer(campaign_id, contact, attempt, at + MARKETING_RETRY, code, at)
            self._count(tenant, "deferred", moved)
            return
        if refusal == Outcome.TEMPLATE_REJECTED:
            # Before the recipient settles: as the last one, it would otherwise end the campaign as done.
            reason = (
                f"Meta refused the template (error {code}: {title or 'no reason given'}); fix it in WhatsApp Manager"
            )
            if await self._store.fail(campaign_id, reason, at):
                log.warning("campaign failed: template refused", tenant=tenant, campaign=campaign_id, code=code)
        moved = await self._store.settle(
            campaign_id,
            contact,
            attempt,
            FAILED,
            at,
            reason=refusal,
            error_code=code or None,
            error_title=title or None,
        )
        self._count(tenant, FAILED, moved)
        if refusal == Outcome.MARKETING_STOPPED:
            await self._store.stop_marketing(tenant, contact, at)

    @staticmethod
    def _count(tenant: str, outcome: str, moved: bool) -> None:
        if moved:
            metrics.CAMPAIGN_MESSAGES.labels(tenant, outcome).inc()
