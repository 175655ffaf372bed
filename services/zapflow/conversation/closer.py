"""The closer: every replica takes contacts whose debounce deadline passed and runs their turns.

Each due contact is locked first (one turn at a time per contact, across replicas); the lock is
extended while its turn runs, so it only expires when the process running it died, and the
turn's settlement releases it. A failed turn acknowledges nothing: its lock expires and the
in-flight turn is re-run.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable

from zapflow.conversation.settings import ConversationSettings
from zapflow.conversation.turnstate import TurnState
from zapflow.platform import metrics
from zapflow.platform.keys import ContactKeys
from zapflow.platform.logging import get_logger

log = get_logger(__name__)

# Runs one locked contact's turn; the token is the lock's, for settling it.
TurnRunner = Callable[[ContactKeys, str], Awaitable[None]]


class Closer:
    def __init__(self, state: TurnState, settings: ConversationSettings, run_turn: TurnRunner) -> None:
        self._state = state
        self._settings = settings
        self._run_turn = run_turn
        self._lease_ms = int(settings.turn_lease_s * 1000)
        self._running: set[ContactKeys] = set()
        self._turns: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.create_task(self._close_due_turns(), name="engine-closer")

    async def stop(self) -> None:
        """Take no more turns, and let the running ones finish."""
        self._stopping.set()
        if self._loop is not None:
            await self._loop
        if self._turns:
            await asyncio.gather(*self._turns, return_exceptions=True)

    async def _close_due_turns(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.close_once()
            except Exception as error:  # Redis briefly away: keep the loop alive
                metrics.ENGINE_FAILURES.labels("closer").inc()
                log.warning("closer failed", error=str(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self._settings.closer_interval_s)

    async def close_once(self) -> None:
        now_ms = int(time.time() * 1000)
        due = await self._state.due(now_ms, self._settings.closer_batch)
        # Hundreds of turns interleaving their awaits on one event loop make every one of them
        # slow; a bounded number at a time keeps turn latency low at the same throughput.
        room = self._settings.max_running_turns - len(self._running)
        candidates = [keys for keys in due if keys not in self._running][: max(room, 0)]
        if not candidates:
            return
        tokens = [secrets.token_hex(8) for _ in candidates]
        # Every lock of this tick in one round trip.
        locked = await self._state.lock(list(zip(candidates, tokens, strict=True)), self._lease_ms)
        busy: list[ContactKeys] = []
        for keys, token, acquired in zip(candidates, tokens, locked, strict=True):
            if not acquired:
                metrics.LOCK_WAITS.labels(keys.tenant).inc()
                busy.append(keys)
                continue
            self._running.add(keys)
            task = asyncio.create_task(self._turn(keys, token))
            self._turns.add(task)
            task.add_done_callback(self._turns.discard)
        if busy:
            # Look again shortly rather than on every tick while the other turn runs.
            await self._state.postpone(busy, now_ms + self._settings.lock_retry_ms)

    async def _turn(self, keys: ContactKeys, token: str) -> None:
        keeper = asyncio.create_task(self._keep_lock(keys, token))
        try:
            await self._run_turn(keys, token)
        except Exception:
            # Nothing is acknowledged: the lock expires and the in-flight turn is re-run.
            metrics.ENGINE_FAILURES.labels("turn").inc()
            log.exception("turn failed; it will be retried", tenant=keys.tenant)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            self._running.discard(keys)

    async def _keep_lock(self, keys: ContactKeys, token: str) -> None:
        while True:
            await asyncio.sleep(self._settings.turn_lease_s / 3)
            try:
                await self._state.extend_lock(keys, token, self._lease_ms)
            except Exception as error:  # Redis briefly away: the lease may still hold at the next try
                metrics.ENGINE_FAILURES.labels("lock").inc()
                log.warning("extending a turn's lock failed", tenant=keys.tenant, error=str(error))
