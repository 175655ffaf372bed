"""WhatsApp's sending rules, enforced as Meta does: the 24-hour window, pair rate, marketing opt-outs, templates.

What the sandbox knows per (business number, customer): when the customer last wrote (their
message's own timestamp), how many messages Meta would still let through to them at once, and
whether they stopped marketing messages; per number: the templates registered for it. A send that
breaks a rule gets Meta's error, so a test against the sandbox catches zapflow breaking it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from zapflow.sandbox.meta import SendMessageRequest, TemplateContent, meta_error
from zapflow.tenants.model import BotTenant
from zapflow.whatsapp.window import SERVICE_WINDOW

Clock = Callable[[], float]
TemplateCategory = Literal["marketing", "utility", "authentication"]
TemplateStatus = Literal["APPROVED", "PAUSED", "DISABLED"]
# A (business number, customer wa_id) pair: the unit of Meta's window, pair rate and opt-outs.
Pair = tuple[str, str]

WINDOW_SECONDS = SERVICE_WINDOW.total_seconds()
_BODY_PARAMETER = re.compile(r"\{\{(\d+)\}\}")
# The template components that take parameters, as a send names them.
_PARAMETRISED_COMPONENTS = ("header", "body", "button")


def body_parameter_count(body: str) -> int:
    """How many parameters a template body takes: its distinct {{1}}, {{2}} ... placeholders."""
    return len(set(_BODY_PARAMETER.findall(body)))


@dataclass(frozen=True)
class Template:
    """A template registered for a number in WhatsApp Manager, as far as Meta checks a send of it."""

    name: str
    language: str
    category: TemplateCategory
    status: TemplateStatus
    body_parameters: int
    header_parameters: int = 0
    button_parameters: int = 0
    body: str | None = None  # the approved text, when known

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def expected_parameters(self, component: str) -> int:
        return {"header": self.header_parameters, "body": self.body_parameters, "button": self.button_parameters}[
            component
        ]


def templates_from_tenant(tenant: BotTenant) -> list[Template]:
    """The templates a tenant file names: its agents' templates and its late-message template, as approved."""
    templates = [
        Template(
            name=choice.name,
            language=choice.language,
            category="utility",
            status="APPROVED",
            body_parameters=choice.parameters,
            body=choice.text,
        )
        for choice in tenant.spec.handoff.templates
    ]
    late = tenant.spec.messaging.late_template
    if late is not None:
        templates.append(
            Template(
                name=late.name,
                language=late.language,
                category=late.category,
                status="APPROVED",
                body_parameters=len(late.body_parameters),
            )
        )
    return templates


def _given_parameters(template: TemplateContent) -> dict[str, int]:
    """How many parameters the send gives each kind of component (several buttons add up)."""
    given = dict.fromkeys(_PARAMETRISED_COMPONENTS, 0)
    for component in template.components:
        kind, parameters = str(component.get("type", "")).lower(), component.get("parameters")
        if kind in given and isinstance(parameters, list):
            given[kind] += len(parameters)
    return given


@dataclass
class _PairAllowance:
    """A token bucket: messages Meta still lets through to one customer at once, refilled over time."""

    tokens: float
    updated: float


@dataclass(frozen=True)
class CustomerState:
    """What the sandbox knows about one customer of one number."""

    phone_number_id: str
    wa_id: str
    last_message_at: float | None
    window_open: bool
    marketing_stopped: bool
    pair_allowance: float

    @property
    def window_closes_at(self) -> float | None:
        return None if self.last_message_at is None else self.last_message_at + WINDOW_SECONDS

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "window_closes_at": self.window_closes_at}


class SendingRules:
    """Meta's checks of a send: the template, the marketing opt-out, the window, then the pair rate.

    A refused send costs the customer's pair allowance nothing: only what reaches them counts.
    """

    def __init__(
        self, *, pair_burst: int, pair_refill_seconds: float, clock: Clock, enforce_window: bool = True
    ) -> None:
        self._enforce_window = enforce_window
        self._pair_burst = pair_burst
        self._pair_refill_seconds = pair_refill_seconds
        self._clock = clock
        self._last_message: dict[Pair, float] = {}
        self._allowances: dict[Pair, _PairAllowance] = {}
        self._marketing_stopped: set[Pair] = set()
        self._templates: dict[str, dict[tuple[str, str], Template]] = {}

    def now(self) -> float:
        return self._clock()

    # --- what the customer did -------------------------------------------------------------------

    def customer_wrote(self, phone_number_id: str, wa_id: str, sent_at: float) -> None:
        """A customer's message, by its own timestamp: a late-delivered older one never shortens the window."""
        pair = (phone_number_id, wa_id)
        self._last_message[pair] = max(sent_at, self._last_message.get(pair, sent_at))

    def set_last_message(self, phone_number_id: str, wa_id: str, sent_at: float) -> None:
        """Set when the customer last wrote, earlier or later: a test's shortcut, not a message."""
        self._last_message[(phone_number_id, wa_id)] = sent_at

    def set_marketing_stopped(self, phone_number_id: str, wa_id: str, stopped: bool) -> None:
        """The customer stopped (or resumed) marketing messages from this number; writing does not resume them."""
        if stopped:
            self._marketing_stopped.add((phone_number_id, wa_id))
        else:
            self._marketing_stopped.discard((phone_number_id, wa_id))

    def customer(self, phone_number_id: str, wa_id: str) -> CustomerState:
        pair = (phone_number_id, wa_id)
        last = self._last_message.get(pair)
        return CustomerState(
            phone_number_id=phone_number_id,
            wa_id=wa_id,
            last_message_at=last,
            window_open=self._window_open(pair),
            marketing_stopped=pair in self._marketing_stopped,
            pair_allowance=self._allowance(pair).tokens,
        )

    # --- the number's templates ------------------------------------------------------------------

    def register_templates(self, phone_number_id: str, templates: Iterable[Template]) -> list[bool]:
        """Add or replace templates by name and language; True for each that is new."""
        registered = self._templates.setdefault(phone_number_id, {})
        created = []
        for template in templates:
            key = (template.name, template.language)
            created.append(key not in registered)
            registered[key] = template
        return created

    def templates(self, phone_number_id: str) -> list[Template]:
        registered = self._templates.get(phone_number_id, {})
        return [registered[key] for key in sorted(registered)]

    def forget_templates(self, phone_number_id: str) -> None:
        """Back to accepting any template from this number."""
        self._templates.pop(phone_number_id, None)

    # --- a send ------------------------------------------------------------------------------------

    def check(self, phone_number_id: str, request: SendMessageRequest) -> None:
        """Raise Meta's GraphError for a send it would refuse; otherwise count it against the pair rate."""
        pair = (phone_number_id, request.wa_id)
        if request.template is not None:
            self._check_template(pair, request.template)
        elif self._enforce_window and not self._window_open(pair):
            raise meta_error(131047)
        allowance = self._allowance(pair)
        if allowance.tokens < 1:
            raise meta_error(131056)
        allowance.tokens -= 1
        self._allowances[pair] = allowance

    def _check_template(self, pair: Pair, sent: TemplateContent) -> None:
        registered = self._templates.get(pair[0])
        if not registered:
            return  # a number with no registered templates accepts any: dev and older tests rely on it
        template = registered.get((sent.name, sent.language.code))
        if template is None:
            raise meta_error(132001, f"template name ({sent.name}) does not exist in {sent.language.code}")
        if template.status == "DISABLED":
            raise meta_error(132016)
        if template.status == "PAUSED":
            raise meta_error(132015)
        for component, given in _given_parameters(sent).items():
            expected = template.expected_parameters(component)
            if given != expected:
                raise meta_error(
                    132000,
                    f"{component}: number of localizable_params ({given}) does not match the expected number of "
                    f"params ({expected})",
                )
        if template.category == "marketing" and pair in self._marketing_stopped:
            raise meta_error(131050)

    def _window_open(self, pair: Pair) -> bool:
        last = self._last_message.get(pair)
        return last is not None and self._clock() < last + WINDOW_SECONDS

    def _allowance(self, pair: Pair) -> _PairAllowance:
        """The pair's bucket as of now, refilled for the time since it was last used."""
        now = self._clock()
        found = self._allowances.get(pair)
        if found is None:
            return _PairAllowance(tokens=self._pair_burst, updated=now)
        refilled = max(0.0, now - found.updated) / self._pair_refill_seconds
        return _PairAllowance(tokens=min(self._pair_burst, found.tokens + refilled), updated=now)
