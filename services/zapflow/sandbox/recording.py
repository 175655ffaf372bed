"""What the sandbox remembers: sends, attempts, inbound messages, and the faults tests asked for."""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class SentMessage:
    """A message the Graph API accepted."""

    wamid: str
    tenant: str
    phone_number_id: str
    to: str  # the recipient's wa_id
    type: str
    payload: dict[str, Any]
    timestamp: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Attempt:
    """One call to /messages, accepted or not, with what the sandbox answered."""

    phone_number_id: str
    http_status: int
    request: Any  # the JSON body, or None when it was not JSON
    response: dict[str, Any]
    timestamp: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class InboundOrigin:
    """Who sent an inbound message: lets a mark-as-read reach the right chat."""

    phone_number_id: str
    wa_id: str


class Recorder:
    """Bounded in-memory history: the oldest entries go first when a limit is reached."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._messages: deque[SentMessage] = deque(maxlen=limit)
        self._attempts: deque[Attempt] = deque(maxlen=limit)
        self._inbound: OrderedDict[str, InboundOrigin] = OrderedDict()

    def record_attempt(self, attempt: Attempt) -> None:
        self._attempts.append(attempt)

    def record_message(self, message: SentMessage) -> None:
        self._messages.append(message)

    def remember_inbound(self, wamid: str, origin: InboundOrigin) -> None:
        self._inbound[wamid] = origin
        self._inbound.move_to_end(wamid)
        while len(self._inbound) > self._limit:
            self._inbound.popitem(last=False)

    def inbound_origin(self, wamid: str) -> InboundOrigin | None:
        return self._inbound.get(wamid)

    def messages(self, phone_number_id: str | None = None, to: str | None = None) -> list[SentMessage]:
        return [
            m
            for m in self._messages
            if (phone_number_id is None or m.phone_number_id == phone_number_id) and (to is None or m.to == to)
        ]

    def attempts(self, phone_number_id: str | None = None) -> list[Attempt]:
        return [a for a in self._attempts if phone_number_id is None or a.phone_number_id == phone_number_id]

    def clear(self) -> None:
        self._messages.clear()
        self._attempts.clear()
        self._inbound.clear()


@dataclass
class Fault:
    code: int  # Meta's error code: the sandbox answers as Meta does for it
    remaining: int
    phone_number_id: str | None  # None: any number

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class FaultPlan:
    """Failures tests ask for: the next N sends (for one number or any) fail in a given way."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, code: int, count: int, phone_number_id: str | None) -> Fault:
        fault = Fault(code=code, remaining=count, phone_number_id=phone_number_id)
        self._faults.append(fault)
        return fault

    def take(self, phone_number_id: str) -> int | None:
        """Consume one failure for this number, the earliest injected first."""
        for fault in self._faults:
            if fault.phone_number_id in (None, phone_number_id):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault.code
        return None

    def pending(self) -> list[Fault]:
        return list(self._faults)

    def clear(self) -> None:
        self._faults.clear()
