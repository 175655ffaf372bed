"""The Redis key schema: every key zapflow writes, what it holds, and how long it lives.

Keys are `zf:<tenant>:<kind>:<id>`, so one tenant's state can be found and counted alone. Each
kind says whose it is:

- contact: state about one customer, keyed by their WhatsApp id. Erasing a contact deletes
  every kind of this scope (`ContactKeys.all()`), plus its entry in the due sets.
- fact: an idempotency key of one message, turn or command. It holds a sequence number or a
  state word, never personal data, and expires on its own.
- tenant: shared by a tenant's contacts (the per-number rate limit, agents' presence).
- agent: an agent's sign-in session; deleted when the agent is removed.

Two keys span tenants: the shared due set (the debounce deadlines every shared conversation
replica reads) and the scheduler's lease; a tenant served by conversation replicas of its own
has a due set of its own instead (`tenant_due_key`). Nothing outside this module spells a key
(a test scans for literals).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PREFIX = "zf"
Scope = Literal["contact", "fact", "tenant", "agent"]


@dataclass(frozen=True)
class KeyKind:
    token: str
    scope: Scope
    holds: str

    def key(self, tenant: str, identifier: str) -> str:
        return f"{PREFIX}:{tenant}:{self.token}:{identifier}"


CONVERSATION = KeyKind(
    "conv",
    "contact",
    "hash: cursor (stream sequence settled), last_seen (newest sequence ingested), first (burst start),"
    " last_at (latest arrival)",
)
LOCK = KeyKind("lock", "contact", "the token of the replica running this contact's turn; expires unless extended")
INFLIGHT = KeyKind("inflight", "contact", "JSON record of the turn being answered, so a re-run has the same id")
HISTORY = KeyKind("hist", "contact", "list: the last turns as JSON, a write-through cache of the relational store")
OUTBOUND_CURSOR = KeyKind(
    "outcursor", "contact", "the outbound stream sequence settled for this contact (egress order)"
)
OWNER = KeyKind(
    "owner",
    "contact",
    "the request id of the handoff that gave the conversation to a person; absent: the bot answers",
)
WINDOW = KeyKind(
    "window",
    "contact",
    "when the customer last wrote (epoch seconds, the message's own timestamp): their 24-hour window",
)
REENGAGED = KeyKind("reengaged", "contact", "set for 24 h after a re-engagement was sent: at most one a day")
PACE = KeyKind("pace", "contact", "GCRA theoretical arrival time of the next message to this customer (pair rate)")
MESSAGE = KeyKind("msg", "fact", "the stream sequence of the first copy of a wamid (24 h by default)")
TURN = KeyKind("turn", "fact", "'answered' once a turn's replies are published (1 h by default)")
COMMAND = KeyKind("out", "fact", "calling:<epoch>, sent:<wamid> or failed:<code>: a Graph API call's state (8 days)")
TIMER = KeyKind(
    "timer",
    "fact",
    "a fired timer's outcome, by timer id: fired:<due ms epoch>, skipped:<due ms epoch> (too late), cancelled or"
    " replaced (after it fired, before it was handled); 8 days",
)
RATE = KeyKind("rate", "tenant", "GCRA theoretical arrival time of a WhatsApp number's next send slot")
KNOWLEDGE_SYNC = KeyKind(
    "kbsync", "tenant", "the embedding replica syncing this tenant's spec knowledge base; expires if it dies"
)
AGENTS_ONLINE = KeyKind(
    "agents", "tenant", "sorted set: the agents with an inbox open, scored by their last heartbeat (ms epoch)"
)
ROUND_ROBIN = KeyKind("rr", "tenant", "the email of the agent assigned last, so the next assignment goes to another")
REACHED = KeyKind(
    "reached",
    "tenant",
    "sorted set: customers a campaign reached outside their 24-hour window, scored by when (epoch seconds);"
    " the messaging limit's moving 24 hours",
)
SESSION = KeyKind("session", "agent", "hash: an agent's inbox session (email, CSRF token); expires when idle")
TENANT_DUE = KeyKind(
    "due",
    "tenant",
    "sorted set: the contacts with a pending turn of a tenant served by conversation replicas of its own, scored"
    " by their debounce deadline (ms epoch); moved into zf:due when the tenant stops being dedicated",
)

KINDS = (
    CONVERSATION,
    LOCK,
    INFLIGHT,
    HISTORY,
    OUTBOUND_CURSOR,
    OWNER,
    WINDOW,
    REENGAGED,
    PACE,
    MESSAGE,
    TURN,
    COMMAND,
    TIMER,
    RATE,
    KNOWLEDGE_SYNC,
    AGENTS_ONLINE,
    ROUND_ROBIN,
    REACHED,
    TENANT_DUE,
    SESSION,
)

# Sorted set of the contacts with a pending turn, scored by their debounce deadline (ms epoch): every
# tenant's but those served by conversation replicas of their own (`tenant_due_key`).
DUE = f"{PREFIX}:due"
# The scheduler replica that holds this runs the jobs.
SCHEDULER_LEADER = f"{PREFIX}:scheduler:leader"


ROLLUP_PREFIX = f"{PREFIX}:scheduler:rollup:"


def rollup_bucket_key(bucket: int) -> str:
    """Taken by the scheduler replica that computes the per-tenant figures of this time bucket."""
    return f"{ROLLUP_PREFIX}{bucket}"


def due_member(tenant: str, contact: str) -> str:
    return f"{tenant}|{contact}"


def parse_due_member(member: str) -> tuple[str, str]:
    tenant, _, contact = member.partition("|")
    return tenant, contact


@dataclass(frozen=True)
class ContactKeys:
    """The keys of one customer of one tenant."""

    tenant: str
    contact: str

    @property
    def conversation(self) -> str:
        return CONVERSATION.key(self.tenant, self.contact)

    @property
    def lock(self) -> str:
        return LOCK.key(self.tenant, self.contact)

    @property
    def inflight(self) -> str:
        return INFLIGHT.key(self.tenant, self.contact)

    @property
    def history(self) -> str:
        return HISTORY.key(self.tenant, self.contact)

    @property
    def outbound_cursor(self) -> str:
        return OUTBOUND_CURSOR.key(self.tenant, self.contact)

    @property
    def owner(self) -> str:
        return OWNER.key(self.tenant, self.contact)

    @property
    def window(self) -> str:
        return WINDOW.key(self.tenant, self.contact)

    @property
    def reengaged(self) -> str:
        return REENGAGED.key(self.tenant, self.contact)

    @property
    def pace(self) -> str:
        return PACE.key(self.tenant, self.contact)

    @property
    def due_member(self) -> str:
        return due_member(self.tenant, self.contact)

    def message(self, wamid: str) -> str:
        return MESSAGE.key(self.tenant, wamid)

    def turn(self, turn_id: str) -> str:
        return TURN.key(self.tenant, turn_id)

    def all(self) -> tuple[str, ...]:
        """Every contact-scoped key of this customer: what an erasure deletes."""
        return tuple(kind.key(self.tenant, self.contact) for kind in KINDS if kind.scope == "contact")


def command_key(tenant: str, command_id: str) -> str:
    return COMMAND.key(tenant, command_id)


def timer_key(tenant: str, timer_id: str) -> str:
    return TIMER.key(tenant, timer_id)


def knowledge_sync_key(tenant: str) -> str:
    return KNOWLEDGE_SYNC.key(tenant, "spec")


def agents_online_key(tenant: str) -> str:
    return AGENTS_ONLINE.key(tenant, "online")


def round_robin_key(tenant: str) -> str:
    return ROUND_ROBIN.key(tenant, "last")


def session_key(tenant: str, session_id: str) -> str:
    return SESSION.key(tenant, session_id)


def rate_key(tenant: str, phone_number_id: str) -> str:
    return RATE.key(tenant, phone_number_id)


def reached_key(tenant: str) -> str:
    return REACHED.key(tenant, "24h")


def tenant_due_key(tenant: str) -> str:
    """The due set of a tenant served by conversation replicas of its own (the others' are in `DUE`)."""
    return TENANT_DUE.key(tenant, "contacts")


def tenant_keys_pattern(tenant: str) -> str:
    """SCAN's pattern for every key of one tenant (a tenant name holds no glob character); see `spans_tenants`."""
    return f"{PREFIX}:{tenant}:*"


def spans_tenants(key: str) -> bool:
    """A key no tenant owns that a tenant's pattern can match: the lease and rollups, for a tenant named "scheduler"."""
    return key == SCHEDULER_LEADER or key.startswith(ROLLUP_PREFIX)
