"""The BotTenant document: one YAML file per customer, the same shape as the custom resource.

These pydantic models are the source of truth. Beside them: secrets.py reads the secrets a
tenant names, files.py loads and validates documents, schema.py derives the CRD's schema and
registry.py keeps the live view every service reads.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from zapflow.tenants.base import Model
from zapflow.tenants.secrets import ResolvedSecrets, SecretRef
from zapflow.whatsapp.payload import PHONE_NUMBER_ID_PATTERN

# A tenant name becomes a NATS subject token and a Kubernetes object name.
TENANT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class WhatsAppSpec(Model):
    phone_number_id: str = Field(
        description="The Cloud API phone number id this tenant answers on.", pattern=PHONE_NUMBER_ID_PATTERN
    )
    graph_api_url: str = Field(
        default="https://graph.facebook.com",
        description="Base URL of the Graph API (the sandbox's URL in development).",
        pattern=r"^https?://",
    )
    api_version: str = Field(default="v21.0", description="Graph API version.", pattern=r"^v[0-9]+\.[0-9]+$")
    app_secret: SecretRef = Field(description="Meta app secret: the key of X-Hub-Signature-256.")
    access_token: SecretRef = Field(description="System-user access token for sending messages.")
    verify_token: SecretRef = Field(description="Token Meta echoes in the webhook verification GET.")


class ButtonSpec(Model):
    id: str = Field(description="Id returned when the customer taps the button.", min_length=1, max_length=256)
    title: str = Field(description="Button label (WhatsApp allows 20 characters).", min_length=1, max_length=20)


class ListRowSpec(Model):
    id: str = Field(description="Id returned when the customer picks the row.", min_length=1, max_length=200)
    title: str = Field(description="Row title (24 characters).", min_length=1, max_length=24)
    description: str = Field(default="", description="Row description (72 characters).", max_length=72)


class ListSectionSpec(Model):
    title: str = Field(default="", description="Section title (24 characters).", max_length=24)
    rows: list[ListRowSpec] = Field(description="Rows of the section.", min_length=1, max_length=10)


class ListSpec(Model):
    button: str = Field(description="Label of the button that opens the list.", min_length=1, max_length=20)
    sections: list[ListSectionSpec] = Field(description="Sections (10 at most).", min_length=1, max_length=10)


class ReplySpec(Model):
    """What the bot answers: text, optionally with reply buttons or a list."""

    text: str = Field(description="Body of the reply.", min_length=1, max_length=4096)
    header: str = Field(default="", description="Header of an interactive reply.", max_length=60)
    footer: str = Field(default="", description="Footer of an interactive reply.", max_length=60)
    buttons: list[ButtonSpec] = Field(default_factory=list, description="Reply buttons (3 at most).", max_length=3)
    menu: ListSpec | None = Field(default=None, alias="list", description="A list menu, instead of buttons.")

    @model_validator(mode="after")
    def _buttons_or_list(self) -> Self:
        if self.buttons and self.menu is not None:
            raise ValueError("a reply has either buttons or a list, not both")
        return self


class MatchSpec(Model):
    """When a rule fires: any keyword, the regex, or the id of a button or list row."""

    keywords: list[str] = Field(
        default_factory=list, description="Words that fire the rule (case- and accent-insensitive)."
    )
    regex: str | None = Field(default=None, description="A Python regular expression searched in the text.")
    button_ids: list[str] = Field(default_factory=list, description="Ids of buttons or list rows that fire the rule.")

    @model_validator(mode="after")
    def _something_to_match(self) -> Self:
        if not (self.keywords or self.regex or self.button_ids):
            raise ValueError("a rule needs keywords, regex or buttonIds")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as error:
                raise ValueError(f"regex does not compile: {error}") from error
        return self


class RuleSpec(Model):
    name: str = Field(description="Name reported in metrics and turn events.", min_length=1, max_length=64)
    match: MatchSpec = Field(description="When the rule fires.")
    reply: ReplySpec | None = Field(default=None, description="What the bot answers (unset only with handoff).")
    handoff: bool = Field(
        default=False,
        description="Hand the conversation to a person instead of answering (e.g. a 'Talk to us' button).",
    )

    @model_validator(mode="after")
    def _reply_or_handoff(self) -> Self:
        if self.reply is None and not self.handoff:
            raise ValueError("a rule needs a reply, or handoff: true")
        return self


class OpenAISpec(Model):
    """Chat completions from any OpenAI-compatible endpoint."""

    base_url: str = Field(
        default="https://api.openai.com/v1", description="Base URL of the OpenAI-compatible API.", pattern=r"^https?://"
    )
    model: str = Field(default="gpt-4o-mini", description="Model name sent with each request.", min_length=1)
    api_key: SecretRef | None = Field(
        default=None, description="API key; env or secretKeyRef in production. Omit for servers that need none."
    )
    system_prompt: str = Field(
        default="You are a helpful assistant answering customers on WhatsApp. Be brief.",
        description="System prompt, first message of every request.",
        max_length=20_000,
    )
    temperature: float = Field(default=0.3, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int = Field(default=400, ge=1, le=16_384, description="Most tokens in one answer.")
    timeout_seconds: float = Field(default=20, gt=0, le=300, description="Timeout of one completion request.")
    history_turns: int = Field(default=10, ge=0, le=100, description="Previous turns sent as context.")


LANGUAGE_PATTERN = r"^[a-z]{2,3}$"


class FaqSpec(Model):
    """The `faq` responder: the best-matching passage of the knowledge base, or the fallback."""

    min_similarity: float = Field(
        default=0.87,
        ge=0,
        le=1,
        description="Answer only when the best passage's cosine similarity to the question reaches this (with an "
        "embedding model; docs/knowledge-quality.md gives the measured trade-off).",
    )
    min_lexical: float = Field(
        default=4.0,
        ge=0,
        description="Answer only when the best passage's BM25 score reaches this (when the service runs without a "
        "model).",
    )


class GroundingSpec(Model):
    """What the `openai` responder is given from the knowledge base."""

    enabled: bool = Field(default=True, description="Give the model the best passages of the knowledge base.")
    passages: int = Field(default=4, ge=1, le=20, description="How many passages are given.")
    min_similarity: float = Field(
        default=0.80, ge=0, le=1, description="Passages less similar to the question than this are not given."
    )


class BotSpec(Model):
    responder: Literal["rules", "openai", "faq"] = Field(default="rules", description="Which responder answers.")
    openai: OpenAISpec | None = Field(default=None, description="Settings of the openai responder.")
    faq: FaqSpec = Field(default_factory=FaqSpec, description="Settings of the faq responder.")
    grounding: GroundingSpec = Field(
        default_factory=GroundingSpec, description="Knowledge-base passages given to the openai responder."
    )
    max_concurrent_calls: int = Field(
        default=8,
        ge=1,
        le=1000,
        description="Responder calls this tenant may have in flight per replica; one slow LLM cannot starve others.",
    )
    typing_indicator: bool = Field(default=True, description="Mark the turn read and show typing when it starts.")
    quote_after_messages: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Quote the turn's last message in the answer when the turn has at least this many (0: never).",
    )

    @model_validator(mode="after")
    def _responder_settings(self) -> Self:
        if self.responder == "openai" and self.openai is None:
            raise ValueError("openai settings are required when responder is openai")
        return self

    greeting: ReplySpec | None = Field(
        default=None, description="Sent to a contact writing for the first time, before any rule."
    )
    rules: list[RuleSpec] = Field(default_factory=list, description="Rules, tried in order.")
    fallback: ReplySpec = Field(
        default_factory=lambda: ReplySpec(text="Sorry, I did not understand. Could you rephrase?"),
        description="Answer when no rule fires.",
    )


class DebounceSpec(Model):
    window_ms: int = Field(
        default=2000, ge=0, le=60_000, description="Sliding window that merges a burst into one turn."
    )
    max_wait_ms: int = Field(default=10_000, ge=0, le=300_000, description="Longest a turn waits for a burst to end.")


class RateLimitSpec(Model):
    messages_per_second: float = Field(
        default=80, gt=0, le=1000, description="Throughput of the number (80 by default, up to 1,000)."
    )
    per_customer_burst: int = Field(
        default=6,
        ge=1,
        le=45,
        description="Messages to one customer sent back to back before pacing starts (a turn's replies fit).",
    )
    per_customer_interval_seconds: float = Field(
        default=6.0,
        ge=0,
        le=60,
        description="Sustained spacing of messages to one customer, under WhatsApp's pair-rate limit (131056).",
    )


DEFAULT_OPT_OUT_KEYWORDS = ("stop", "parar", "sair", "cancelar", "baja", "unsubscribe")


class TemplateRefSpec(Model):
    """An approved template zapflow sends on its own (outside the window), with its parameters."""

    name: str = Field(description="The template's name in WhatsApp Manager.", pattern=r"^[a-z0-9_]{1,512}$")
    language: str = Field(default="en_US", description="The template's language code, e.g. pt_BR.", min_length=2)
    category: Literal["marketing", "utility", "authentication"] = Field(
        default="utility", description="The category Meta approved it in (marketing respects opt-outs)."
    )
    body_parameters: list[str] = Field(
        default_factory=list,
        description="Body parameters in order; {name} becomes the customer's profile name.",
        max_length=20,
    )


class ReengagementRuleSpec(Model):
    """A nudge to a customer whose conversation went quiet; the first rule that fits a turn applies."""

    name: str = Field(description="The rule's name (in metrics and logs).", pattern=r"^[a-z0-9][-a-z0-9_]{0,62}$")
    when: Literal["unanswered", "quiet"] = Field(
        default="unanswered",
        description="unanswered: the bot's last answer was a fallback (it did not understand, or failed);"
        " quiet: any conversation the bot answered last.",
    )
    after_hours: float = Field(
        gt=0, le=720, description="Hours after the customer's last message; cancelled if they write before."
    )
    text: str | None = Field(
        default=None, description="Sent inside the customer's 24-hour window.", min_length=1, max_length=4096
    )
    template: TemplateRefSpec | None = Field(
        default=None, description="Sent outside the window (unset: no nudge once the window closed)."
    )

    @model_validator(mode="after")
    def _something_to_send(self) -> Self:
        if self.text is None and self.template is None:
            raise ValueError(f"re-engagement rule {self.name} needs a text, a template, or both")
        return self


class ReengagementSpec(Model):
    """Nudges to customers who went quiet: at most one per customer per 24 h, within WhatsApp's rules."""

    rules: list[ReengagementRuleSpec] = Field(
        default_factory=list, description="Tried in order; none: no re-engagement.", max_length=10
    )


class MessagingSpec(Model):
    """WhatsApp's rules for messages the business starts: limits, opt-outs, late messages."""

    messaging_limit: Literal[250, 2_000, 10_000, 100_000, "unlimited"] = Field(
        default=250,
        description="Unique customers reached outside their window in a moving 24 h: 250, 2000, 10000, 100000"
        " or unlimited (the business's tier in WhatsApp Manager).",
    )
    campaign_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Share of the number's throughput campaigns may use; the bot's answers keep the rest.",
    )
    opt_out_keywords: list[str] = Field(
        default_factory=lambda: list(DEFAULT_OPT_OUT_KEYWORDS),
        description="A message that is exactly one of these opts the customer out of campaigns.",
    )
    opt_out_confirmation: str = Field(
        default="Done: you will not get promotional messages from us any more. You can still write to us.",
        description="Told once when a customer opts out.",
        min_length=1,
        max_length=1024,
    )
    late_template: TemplateRefSpec | None = Field(
        default=None,
        description="Answer to a message that reached zapflow after its 24-hour window closed (unset: none).",
    )

    @property
    def customers_per_day(self) -> int | None:
        """The messaging limit as a number (None: unlimited)."""
        return None if self.messaging_limit == "unlimited" else self.messaging_limit


class IdempotencySpec(Model):
    """How long this tenant's messages and turns are remembered as handled (unset: the service's)."""

    message_key_ttl_seconds: int | None = Field(
        default=None, ge=60, le=30 * 86_400, description="A wamid is processed once within this time (default 24 h)."
    )
    turn_key_ttl_seconds: int | None = Field(
        default=None, ge=60, le=7 * 86_400, description="A turn is answered once within this time (default 1 h)."
    )


class DataSpec(Model):
    """What zapflow keeps of this tenant's conversations, and for how long."""

    session_idle_minutes: int = Field(
        default=30,
        ge=1,
        le=7 * 24 * 60,
        description="A conversation closes after this long without a message either way; it is then archived.",
    )
    retention_days: int = Field(
        default=90,
        ge=1,
        le=3650,
        description="Conversations (messages with their text) are deleted this long after they closed.",
    )
    analytics_retention_days: int = Field(
        default=730,
        ge=1,
        le=3650,
        description="Archived figures (pseudonymised, no text) are deleted this long after the session opened.",
    )


class FaqEntrySpec(Model):
    question: str = Field(description="The question, as customers might ask it.", min_length=1, max_length=1000)
    answer: str = Field(description="The answer the bot gives.", min_length=1, max_length=4096)
    language: str | None = Field(
        default=None,
        description="ISO 639-1 code; unset: the knowledge spec's, else detected.",
        pattern=LANGUAGE_PATTERN,
    )


class KnowledgeSpec(Model):
    """The tenant's knowledge base as the spec declares it; `zapflow kb ingest` adds documents beside it."""

    faq: list[FaqEntrySpec] = Field(default_factory=list, description="Inline questions and answers.", max_length=2000)
    folders: list[str] = Field(
        default_factory=list,
        description="Folders on the embedding service's disk whose Markdown, text, CSV and PDF files are ingested.",
    )
    config_maps: list[str] = Field(
        default_factory=list,
        description="ConfigMaps whose files are ingested: a BotTenant's are read by the operator (labelled "
        "zapflow.io/knowledge: 'true', in its namespace); a tenant file's are mounted under the embedding service's "
        "knowledge directory.",
    )
    language: str | None = Field(
        default=None, description="Language of sources that do not say (unset: detected).", pattern=LANGUAGE_PATTERN
    )


# What customers write when they want a person, in the languages zapflow's demo tenants speak.
# Matched as whole words or phrases, case- and accent-insensitive, like rule keywords.
DEFAULT_HANDOFF_KEYWORDS = [
    "atendente",
    "humano",
    "falar com uma pessoa",
    "falar com alguem",
    "pessoa de verdade",
    "agente",
    "hablar con una persona",
    "hablar con alguien",
    "asesor",
    "operador",
    "human",
    "agent",
    "talk to a person",
    "speak to a person",
    "real person",
    "representative",
]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK = r"^([01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$"


class OpeningHoursSpec(Model):
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        description="Days these hours apply to.", min_length=1
    )
    opens: str = Field(description="Local time agents start, HH:MM.", pattern=_CLOCK)
    closes: str = Field(
        description="Local time agents stop, HH:MM (24:00 for midnight); after `opens`.", pattern=_CLOCK
    )

    @model_validator(mode="after")
    def _opens_before_closes(self) -> Self:
        if self.closes <= self.opens:
            raise ValueError(f"closes ({self.closes}) must be after opens ({self.opens})")
        return self


class BusinessHoursSpec(Model):
    """When agents work; outside these hours a handoff is still queued, and the customer is told."""

    timezone: str = Field(default="UTC", description="IANA time zone of the hours, e.g. America/Sao_Paulo.")
    hours: list[OpeningHoursSpec] = Field(
        default_factory=list, description="Opening hours; empty: always open.", max_length=50
    )

    @model_validator(mode="after")
    def _known_zone(self) -> Self:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(f"unknown time zone {self.timezone!r}") from error
        return self


class TemplateChoiceSpec(Model):
    """An approved message template agents may send once the customer's 24-hour window has closed."""

    name: str = Field(description="The template's name in WhatsApp Manager.", pattern=r"^[a-z0-9_]{1,512}$")
    language: str = Field(default="en_US", description="The template's language code, e.g. pt_BR.", min_length=2)
    text: str = Field(
        description="The body as approved, with {{1}}, {{2}} ... for its parameters (shown to the agent).",
        min_length=1,
        max_length=1024,
    )

    @property
    def parameters(self) -> int:
        """How many body parameters the template takes."""
        return len(set(re.findall(r"\{\{(\d+)\}\}", self.text)))


class CannedResponseSpec(Model):
    shortcut: str = Field(description="What the agent types after '/' to pick it.", pattern=r"^[a-z0-9_-]{1,32}$")
    text: str = Field(description="The reply inserted into the reply box.", min_length=1, max_length=4096)


NotifiedEvent = Literal["requested", "message", "assigned", "transferred", "resolved", "timeout"]


class NotifySpec(Model):
    """An outgoing webhook that tells the tenant's agents about handoffs (Slack-compatible JSON)."""

    url: str = Field(
        description="Where notifications are POSTed (a Slack incoming webhook works).", pattern=r"^https?://"
    )
    secret: SecretRef | None = Field(
        default=None,
        description="Key of the X-Zapflow-Signature-256 header (HMAC-SHA256 of the body); unset: unsigned.",
    )
    events: list[NotifiedEvent] = Field(
        default_factory=lambda: list[NotifiedEvent](["requested", "timeout"]),
        description="Which handoff events are notified.",
    )


class HandoffSpec(Model):
    """When a conversation goes to a person, what the customer is told, and how agents work."""

    enabled: bool = Field(default=True, description="Customers and the bot can ask for a person.")
    keywords: list[str] = Field(
        default_factory=lambda: list(DEFAULT_HANDOFF_KEYWORDS),
        description="Words or phrases that ask for a person (case- and accent-insensitive).",
    )
    after_faq_misses: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Hand over after this many turns in a row the faq responder could not answer (0: never).",
    )
    after_failures: int = Field(
        default=2, ge=0, le=100, description="Hand over after this many turns in a row the responder failed (0: never)."
    )
    notice: str = Field(
        default="I'm passing you to a person from our team. They will answer here.",
        description="Told to the customer when the conversation goes to the queue.",
        min_length=1,
        max_length=1024,
    )
    wait_notice: str = Field(
        default="Expected wait: about {minutes} min.",
        description="Added to the notice when agents are online; {minutes} is the expected wait.",
        max_length=1024,
    )
    closed_notice: str = Field(
        default="We are closed right now; a person will answer when we open.",
        description="Told instead of the notice outside the business hours.",
        min_length=1,
        max_length=1024,
    )
    closing_message: str | None = Field(
        default=None, description="Sent when an agent resolves without a message of their own (unset: nothing)."
    )
    business_hours: BusinessHoursSpec = Field(default_factory=BusinessHoursSpec, description="When agents work.")
    auto_assign: bool = Field(default=True, description="Give waiting conversations to online agents in turn.")
    max_open_per_agent: int = Field(
        default=5, ge=1, le=1000, description="Conversations one agent holds at most (auto-assignment and claims)."
    )
    inactivity_minutes: int = Field(
        default=60, ge=1, le=7 * 24 * 60, description="A conversation with nobody writing for this long times out."
    )
    on_inactivity: Literal["queue", "bot"] = Field(
        default="bot",
        description="What a timed-out assigned conversation does: back to the queue, or back to the bot.",
    )
    priorities: dict[str, int] = Field(
        default_factory=lambda: {"responder_failures": 2, "customer_asked": 1, "rule": 1, "llm": 1},
        description="Queue priority by reason (higher first; reasons not named: 0).",
    )
    templates: list[TemplateChoiceSpec] = Field(
        default_factory=list, description="Approved templates agents may send outside the 24-hour window."
    )
    canned_responses: list[CannedResponseSpec] = Field(
        default_factory=list, description="Prepared replies agents insert with /shortcut.", max_length=500
    )
    labels: list[str] = Field(
        default_factory=list, description="Labels agents may put on conversations.", max_length=100
    )
    notify: NotifySpec | None = Field(default=None, description="A webhook that tells agents about handoffs.")


class ScalingSpec(Model):
    """Where this tenant's turns are answered: the shared conversation workload, or one of its own."""

    dedicated: bool = Field(
        default=False,
        description="Answer this tenant's turns on conversation replicas of its own (a Deployment the operator "
        "creates, scaled by KEDA on its own consumer's lag: docs/operator.md, 'A dedicated conversation workload'). "
        "Only a BotTenant resource has this effect; a tenant file applied with `zapflow tenant apply` is always "
        "answered by the shared replicas.",
    )
    min_replicas: int = Field(
        default=1, ge=1, le=100, description="Fewest replicas of the dedicated workload (held messages need one)."
    )
    max_replicas: int = Field(default=4, ge=1, le=100, description="Most replicas of the dedicated workload.")

    @model_validator(mode="after")
    def _min_below_max(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas ({self.min_replicas}) is above maxReplicas ({self.max_replicas})")
        return self


class TenantSpec(Model):
    whatsapp: WhatsAppSpec = Field(description="The WhatsApp Cloud API number and its credentials.")
    bot: BotSpec = Field(default_factory=BotSpec, description="The responder and its settings.")
    debounce: DebounceSpec = Field(default_factory=DebounceSpec, description="Turn debounce.")
    rate_limits: RateLimitSpec = Field(default_factory=RateLimitSpec, description="Sending limits.")
    idempotency: IdempotencySpec = Field(default_factory=IdempotencySpec, description="Idempotency key lifetimes.")
    data: DataSpec = Field(default_factory=DataSpec, description="Session closing and data retention.")
    knowledge: KnowledgeSpec = Field(default_factory=KnowledgeSpec, description="The knowledge base the spec declares.")
    handoff: HandoffSpec = Field(default_factory=HandoffSpec, description="Human handoff and the agent inbox.")
    messaging: MessagingSpec = Field(
        default_factory=MessagingSpec, description="Messaging limits, opt-outs and late messages."
    )
    reengagement: ReengagementSpec = Field(
        default_factory=ReengagementSpec, description="Nudges to customers whose conversation went quiet."
    )
    scaling: ScalingSpec = Field(
        default_factory=ScalingSpec, description="A dedicated conversation workload for this tenant, or the shared one."
    )
    deletion_policy: Literal["Retain", "Erase"] = Field(
        default="Retain",
        description="What deleting the BotTenant does to the tenant's stored data: Retain keeps it (conversations, "
        "analytics, campaign history; retention ages it out as usual); Erase has the operator ask the scheduler to "
        "erase all of it from every store (Redis, JetStream, the database, analytics) once the tenant has left the "
        "registry, and keeps the BotTenant's finalizer until that succeeds. A tenant file removed with `zapflow "
        "tenant delete` is erased with `zapflow tenant erase`.",
    )


class TenantMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: Annotated[str, Field(pattern=TENANT_NAME_PATTERN, description="The tenant's id.")]


class BotTenant(Model):
    api_version: Literal["zapflow.io/v1alpha1"] = Field(description="Always zapflow.io/v1alpha1.")
    kind: Literal["BotTenant"] = Field(description="Always BotTenant.")
    metadata: TenantMetadata
    spec: TenantSpec

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def owner_uid(self) -> str | None:
        """The uid of the BotTenant resource the operator wrote this entry from; None for `zapflow tenant apply`."""
        uid = (self.metadata.model_extra or {}).get("uid")
        return str(uid) if uid else None

    @property
    def served_by_dedicated_workload(self) -> bool:
        """Whether the tenant's turns are answered by conversation replicas of its own.

        Only the operator creates such replicas: `spec.scaling` of a tenant file has no workload behind it.
        """
        return self.spec.scaling.dedicated and self.owner_uid is not None

    @cached_property
    def secrets(self) -> ResolvedSecrets:
        """This revision's secrets, each read once (the registry parses each revision anew)."""
        return ResolvedSecrets()

    def document(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    def inline_secrets(self) -> list[str]:
        """Paths of secrets given inline (refused outside development)."""
        return [path for path, _ in _secret_refs(self.document(), "")]

    def redacted(self) -> dict[str, Any]:
        """The document with inline secret values masked: safe to print or log."""
        document = self.document()
        for _, ref in _secret_refs(document, ""):
            ref["value"] = "***"
        return document


def _secret_refs(node: Any, path: str) -> list[tuple[str, dict[str, Any]]]:
    """Every inline SecretRef ({"value": ...}) in a document, with its path."""
    if isinstance(node, dict):
        if set(node) == {"value"}:
            return [(path, node)]
        return [found for key, child in node.items() for found in _secret_refs(child, f"{path}.{key}".lstrip("."))]
    if isinstance(node, list):
        return [found for i, child in enumerate(node) for found in _secret_refs(child, f"{path}[{i}]")]
    return []
