"""Re-engagement: a nudge to a customer whose conversation went quiet, inside WhatsApp's rules.

Every answered turn (consumer `scheduler-reengage-turns`) decides its contact's nudge: the first of
the tenant's `reengagement.rules` that fits the turn's outcome schedules a timer at the customer's
last message plus `afterHours`, replacing the one before; a turn that no rule fits cancels it. So a
customer who writes again moves or cancels their nudge. When the timer fires, the nudge goes only if

- the customer has not written since it was scheduled (their window key is no newer);
- no person has the conversation (the owner key);
- the contact got no re-engagement in the last 24 hours (the `reengaged` key, taken as it is sent);
- for a marketing template, the contact has not opted out nor stopped marketing messages.

Inside the customer's 24-hour window the rule's text goes; outside it only its approved template,
or nothing. The command's id derives from the timer's, so a handler that runs twice sends once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import BaseModel
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from zapflow.platform import bus, catalogue, metrics
from zapflow.platform.keys import ContactKeys
from zapflow.platform.logging import get_logger
from zapflow.scheduler.timers import Fired, LatePolicy, Timers
from zapflow.store.campaigns import CampaignStore
from zapflow.store.models import Contact
from zapflow.tenants.model import BotTenant, ReengagementRuleSpec, ReengagementSpec
from zapflow.v1 import outbound_pb2, turn_pb2
from zapflow.whatsapp import window
from zapflow.whatsapp.templates import fill_template

log = get_logger(__name__)

REENGAGE = "reengage"
# A nudge more than two hours late (the scheduler was down) would land at a time nobody chose.
REENGAGE_LATE = LatePolicy(max_lateness_s=2 * 3600)
ONE_A_DAY_S = 86_400
# The bot did not understand, or failed: the conversation ended unresolved.
UNANSWERED_OUTCOMES = frozenset({"fallback", "error_fallback"})
# Turns the bot answered; the others (a person has it, an opt-out, a late message, nothing to
# answer) are no conversation to nudge.
ANSWERED_OUTCOMES = UNANSWERED_OUTCOMES | {"rule", "greeting", "llm", "faq"}


class Nudge(BaseModel):
    """A timer's payload: which rule, and when the customer had last written as it was scheduled."""

    rule: str
    turn_id: str
    last_customer_at: float


def rule_for(spec: ReengagementSpec, outcome: str) -> ReengagementRuleSpec | None:
    """The first rule that fits a turn's outcome."""
    if outcome not in ANSWERED_OUTCOMES:
        return None
    for rule in spec.rules:
        if rule.when == "quiet" or outcome in UNANSWERED_OUTCOMES:
            return rule
    return None


class Reengagement:
    def __init__(
        self,
        js: JetStreamContext,
        redis: Redis,
        database: AsyncEngine,
        tenant_named: Callable[[str], BotTenant | None],
        timers: Timers,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._js = js
        self._redis = redis
        self._database = database
        self._preferences = CampaignStore(database)
        self._tenant_named = tenant_named
        self._timers = timers
        self._clock = clock

    async def on_turn(self, turn: turn_pb2.Turn, _msg: Msg) -> None:
        """Schedule, move or cancel the contact's nudge after a turn."""
        tenant = self._tenant_named(turn.tenant)
        if tenant is None or not tenant.spec.reengagement.rules:
            return
        rule = rule_for(tenant.spec.reengagement, turn.outcome)
        if rule is None:
            await self._timers.cancel(REENGAGE, turn.tenant, turn.contact)
            return
        last = await self._redis.get(ContactKeys(turn.tenant, turn.contact).window)
        # Redis lost it: the turn began with the customer's messages.
        last_customer_at = float(last) if last is not None else turn.started_at.ToDatetime(UTC).timestamp()
        due = datetime.fromtimestamp(last_customer_at, UTC) + timedelta(hours=rule.after_hours)
        nudge = Nudge(rule=rule.name, turn_id=turn.turn_id, last_customer_at=last_customer_at)
        await self._timers.schedule(REENGAGE, turn.tenant, turn.contact, due, nudge.model_dump_json().encode())

    async def on_due(self, fired: Fired) -> None:
        """The nudge is due: send it, unless something since says not to."""
        nudge = Nudge.model_validate_json(fired.payload)
        sent = await self._nudge(fired, nudge)
        metrics.REENGAGEMENTS.labels(fired.tenant, nudge.rule, sent).inc()
        log.info("re-engagement", tenant=fired.tenant, rule=nudge.rule, outcome=sent)

    async def _nudge(self, fired: Fired, nudge: Nudge) -> str:
        tenant = self._tenant_named(fired.tenant)
        rule = next((r for r in tenant.spec.reengagement.rules if r.name == nudge.rule), None) if tenant else None
        if tenant is None or rule is None:
            return "skipped_rule_removed"
        contact = ContactKeys(fired.tenant, fired.key)
        last, owner = await self._redis.mget(contact.window, contact.owner)
        if last is not None and float(last) > nudge.last_customer_at:
            return "skipped_customer_wrote"
        if owner is not None:
            return "skipped_person_has_it"
        now = self._clock()
        closes = window.closes_at(datetime.fromtimestamp(nudge.last_customer_at, UTC))
        inside = closes is not None and now < closes
        template = None if inside else rule.template
        if not inside and template is None:
            return "skipped_window_closed"
        if template is not None and template.category == "marketing" and await self._refused_marketing(contact):
            return "skipped_opted_out"
        # The day's nudge may be this very timer's: a handler that died after sending runs again, and the
        # command's id makes it one message.
        taken = await self._redis.set(contact.reengaged, fired.timer_id, nx=True, ex=ONE_A_DAY_S)
        if not taken and str(await self._redis.get(contact.reengaged)) != fired.timer_id:
            return "skipped_once_a_day"
        command = outbound_pb2.OutboundCommand(
            command_id=f"re:{fired.timer_id}", tenant=fired.tenant, contact=fired.key, sender="reengage"
        )
        command.created_at.FromDatetime(now)
        if closes is not None:
            command.window_closes_at.FromDatetime(closes)
        if template is not None:
            fill_template(command, template, await self._customer_name(contact))
        else:
            command.text.CopyFrom(outbound_pb2.OutText(body=rule.text or ""))
        await bus.publish(self._js, catalogue.outbound_subject(fired.tenant, fired.key), command, command.command_id)
        return "sent_template" if template is not None else "sent_text"

    async def _refused_marketing(self, contact: ContactKeys) -> bool:
        preference = (await self._preferences.preferences(contact.tenant, [contact.contact])).get(contact.contact)
        return preference is not None and (
            preference.opted_out_at is not None or preference.marketing_stopped_at is not None
        )

    async def _customer_name(self, contact: ContactKeys) -> str:
        async with self._database.connect() as conn:
            name = await conn.scalar(
                select(Contact.profile_name).where(Contact.tenant == contact.tenant, Contact.wa_id == contact.contact)
            )
        return str(name or "")
