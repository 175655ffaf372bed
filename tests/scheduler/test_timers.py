"""Durable timers on nats-server's message schedules: on time, replaced, cancelled, late, restarts, SIGKILLs."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from tests.support import timer_replica
from tests.support.platform import eventually
from tests.support.servers import ManagedServer
from zapflow.platform import bus, catalogue, keys
from zapflow.platform.redis import connect_redis
from zapflow.platform.supervisor import ProcessSpec, Supervised
from zapflow.scheduler.timers import Fired, LatePolicy, Timers
from zapflow.v1.timer_pb2 import Timer

ALWAYS = LatePolicy(max_lateness_s=None)
NUDGE = "nudge"
# How late a timer that fires on time may reach its handler on a loaded 2-core box.
ON_TIME_S = 1.0
ROOT = Path(__file__).resolve().parents[2]
REPLICA_TIMERS = 200
# The killed replica's timers come back to the survivor after this long.
REPLICA_ACK_WAIT_S = 2.0


@dataclass
class Handled:
    """What a handler saw, and an event per key."""

    fired: list[Fired] = field(default_factory=list)
    seen: dict[str, asyncio.Event] = field(default_factory=dict)

    async def __call__(self, fired: Fired) -> None:
        self.fired.append(fired)
        self.arrival(fired.key).set()

    def arrival(self, key: str) -> asyncio.Event:
        return self.seen.setdefault(key, asyncio.Event())

    def keys(self) -> list[str]:
        return [fired.key for fired in self.fired]


@pytest.fixture
async def redis_client(redis: ManagedServer) -> AsyncIterator[Redis]:
    client = connect_redis(f"{redis.url}/0")
    yield client
    await client.aclose()


@pytest.fixture
async def timers(js: JetStreamContext, redis_client: Redis) -> Timers:
    await bus.ensure_stream(js, catalogue.TIMER_STREAM)
    return Timers(js, redis_client)


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def consuming(js: JetStreamContext, timers: Timers) -> AsyncIterator[None]:
    """The scheduler's consumer of fired timers, as the service runs it."""
    consumer: bus.Consumer[Timer] = bus.Consumer(js, catalogue.TIMERS, Timer, timers.handle)
    await consumer.start()
    try:
        yield
    finally:
        await consumer.stop()


def soon(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


async def fired_in_stream(js: JetStreamContext, kind: str, tenant: str, key: str) -> Timer | None:
    """The last timer nats-server fired for (kind, tenant, key), if any."""
    try:
        found = await js.get_last_msg(catalogue.TIMER_STREAM.name, catalogue.due_subject(kind, tenant, key))
    except NotFoundError:
        return None
    return Timer.FromString(found.data or b"")


async def settled(js: JetStreamContext) -> bool:
    """The consumer has been given every fired timer and acknowledged each."""
    info = await js.consumer_info(catalogue.TIMER_STREAM.name, catalogue.TIMERS.durable)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def sequences(js: JetStreamContext, stream: str, subject: str) -> list[int]:
    """The sequences of the messages on a subject filter, as an erasure finds them."""
    found: list[int] = []
    while True:
        try:
            message = await js.get_msg(stream, seq=found[-1] + 1 if found else 1, subject=subject, next=True)
        except NotFoundError:
            return found
        assert message.seq is not None
        found.append(message.seq)


def counted(metric: str, tenant: str, kind: str) -> float:
    return REGISTRY.get_sample_value(metric, {"tenant": tenant, "kind": kind}) or 0.0


async def test_a_timer_fires_once_at_its_time_with_its_payload(
    js: JetStreamContext, timers: Timers, redis_client: Redis, tenant: str
) -> None:
    handled = Handled()
    timers.on(NUDGE, handled, ALWAYS)
    due_at = soon(0.7)
    async with consuming(js, timers):
        timer_id = await timers.schedule(NUDGE, tenant, "5511999990001", due_at, b"template: hello")
        await asyncio.wait_for(handled.arrival("5511999990001").wait(), timeout=10)
        reached = datetime.now(UTC)

    (fired,) = handled.fired
    assert (fired.timer_id, fired.kind, fired.tenant, fired.payload) == (timer_id, NUDGE, tenant, b"template: hello")
    assert fired.due_at == due_at
    assert due_at <= reached and 0 <= fired.lateness_s < ON_TIME_S
    assert await redis_client.get(keys.timer_key(tenant, timer_id)) == f"fired:{int(due_at.timestamp() * 1000)}"
    assert counted("zapflow_scheduler_timers_fired_total", tenant, NUDGE) == 1
    # Once fired, nothing is left waiting: the schedule message is gone.
    with pytest.raises(NotFoundError):
        await js.get_last_msg(catalogue.TIMER_STREAM.name, catalogue.timer_subject(NUDGE, tenant, "5511999990001"))


async def test_scheduling_again_moves_the_timer(js: JetStreamContext, timers: Timers, tenant: str) -> None:
    handled = Handled()
    timers.on(NUDGE, handled, ALWAYS)
    async with consuming(js, timers):
        await timers.schedule(NUDGE, tenant, "5511999990002", soon(0.5), b"first")
        later = soon(1.2)
        await timers.schedule(NUDGE, tenant, "5511999990002", later, b"second")
        await asyncio.wait_for(handled.arrival("5511999990002").wait(), timeout=10)

    # The first would have fired before the second, on the same subject, and been handled first.
    assert [fired.payload for fired in handled.fired] == [b"second"]
    assert handled.fired[0].due_at >= later - timedelta(milliseconds=1)


async def test_cancel_stops_a_waiting_timer(js: JetStreamContext, timers: Timers, tenant: str) -> None:
    handled = Handled()
    timers.on(NUDGE, handled, ALWAYS)
    async with consuming(js, timers):
        await timers.schedule(NUDGE, tenant, "cancelled", soon(0.4))
        await timers.schedule(NUDGE, tenant, "kept", soon(0.8))
        assert await timers.cancel(NUDGE, tenant, "cancelled") is True
        assert await timers.cancel(NUDGE, tenant, "cancelled") is False
        assert await timers.cancel(NUDGE, tenant, "never-scheduled") is False
        await asyncio.wait_for(handled.arrival("kept").wait(), timeout=10)

    assert handled.keys() == ["kept"]
    assert await fired_in_stream(js, NUDGE, tenant, "cancelled") is None, "nats-server never fired it"
    assert counted("zapflow_scheduler_timers_cancelled_total", tenant, NUDGE) == 1


async def test_a_timer_cancelled_or_replaced_after_it_fired_is_not_handled(
    js: JetStreamContext, timers: Timers, redis_client: Redis, tenant: str
) -> None:
    handled = Handled()
    timers.on(NUDGE, handled, ALWAYS)
    # No consumer yet: both fire and wait in the stream.
    cancelled_id = await timers.schedule(NUDGE, tenant, "cancelled", soon(0.2))
    replaced_id = await timers.schedule(NUDGE, tenant, "replaced", soon(0.2))
    await eventually(lambda: fired_in_stream(js, NUDGE, tenant, "cancelled"), what="the first timer fired")
    await eventually(lambda: fired_in_stream(js, NUDGE, tenant, "replaced"), what="the second timer fired")

    assert await timers.cancel(NUDGE, tenant, "cancelled") is True
    replacement_id = await timers.schedule(NUDGE, tenant, "replaced", soon(0.3), b"replacement")
    async with consuming(js, timers):
        await asyncio.wait_for(handled.arrival("replaced").wait(), timeout=10)
        await eventually(lambda: settled(js), what="every fired timer acknowledged")

    assert [(fired.key, fired.timer_id) for fired in handled.fired] == [("replaced", replacement_id)]
    assert await redis_client.get(keys.timer_key(tenant, cancelled_id)) == "cancelled"
    assert await redis_client.get(keys.timer_key(tenant, replaced_id)) == "replaced"


async def test_a_timer_due_while_no_consumer_ran_fires_late_or_is_skipped_by_its_kinds_policy(
    js: JetStreamContext, timers: Timers, redis_client: Redis, tenant: str
) -> None:
    fire_late, skip_stale = Handled(), Handled()
    timers.on("campaign", fire_late, ALWAYS)
    timers.on(NUDGE, skip_stale, LatePolicy(max_lateness_s=1.0))
    due_at = soon(-3.0)  # due 3 s ago: nats-server fires it at once, nobody consumes yet
    await timers.schedule("campaign", tenant, "c-42", due_at)
    stale_id = await timers.schedule(NUDGE, tenant, "5511999990003", due_at)
    await eventually(lambda: fired_in_stream(js, NUDGE, tenant, "5511999990003"), what="the stale timer fired")

    async with consuming(js, timers):
        await asyncio.wait_for(fire_late.arrival("c-42").wait(), timeout=10)
        await eventually(lambda: settled(js), what="every fired timer acknowledged")

    assert fire_late.fired[0].lateness_s >= 3.0
    assert skip_stale.fired == []
    assert await redis_client.get(keys.timer_key(tenant, stale_id)) == f"skipped:{int(due_at.timestamp() * 1000)}"
    assert counted("zapflow_scheduler_timers_skipped_late_total", tenant, NUDGE) == 1
    assert counted("zapflow_scheduler_timers_fired_total", tenant, "campaign") == 1


async def test_timers_survive_a_nats_server_restart(nats: ManagedServer, redis_client: Redis, tenant: str) -> None:
    client = await bus.connect(nats.url, "timers-before")
    timers = Timers(client.jetstream(), redis_client)
    await bus.ensure_stream(client.jetstream(), catalogue.TIMER_STREAM)
    # Due while the server is down (it takes longer than that to start again), and well after.
    await timers.schedule(NUDGE, tenant, "during", soon(0.1))
    await timers.schedule(NUDGE, tenant, "after", soon(3.0))
    await timers.schedule(NUDGE, tenant, "cancelled", soon(0.5))
    assert await timers.cancel(NUDGE, tenant, "cancelled")
    await client.close()
    nats.kill()
    nats.start()

    client = await bus.connect(nats.url, "timers-after")
    js = client.jetstream()
    timers = Timers(js, redis_client)
    handled = Handled()
    timers.on(NUDGE, handled, ALWAYS)
    try:
        async with consuming(js, timers):
            await asyncio.wait_for(handled.arrival("after").wait(), timeout=15)
            await eventually(lambda: settled(js), what="every fired timer acknowledged")
        assert await fired_in_stream(js, NUDGE, tenant, "cancelled") is None
    finally:
        await client.close()

    assert sorted(handled.keys()) == ["after", "during"]
    by_key = {fired.key: fired for fired in handled.fired}
    assert by_key["after"].lateness_s < ON_TIME_S, "a timer due after the restart fires on time"


async def test_erasing_a_contact_cancels_its_waiting_timers(js: JetStreamContext, timers: Timers, tenant: str) -> None:
    handled = Handled()
    timers.on(NUDGE, handled, ALWAYS)
    await timers.schedule(NUDGE, tenant, "5511999990004", soon(0.4))
    await timers.schedule(NUDGE, tenant, "5511999990005", soon(0.8))
    # What an erasure does: secure-delete every message on the contact's subjects of each stream.
    for subject in catalogue.contact_subjects(tenant, "5511999990004")[catalogue.TIMER_STREAM.name]:
        for seq in await sequences(js, catalogue.TIMER_STREAM.name, subject):
            assert await bus.secure_delete(js, catalogue.TIMER_STREAM.name, seq)

    async with consuming(js, timers):
        await asyncio.wait_for(handled.arrival("5511999990005").wait(), timeout=10)
    assert handled.keys() == ["5511999990005"]
    assert await fired_in_stream(js, NUDGE, tenant, "5511999990004") is None


@dataclass(frozen=True)
class WroteFile:
    """Ready once the process wrote this file (the replica does after its consumer started)."""

    path: Path

    def __call__(self, pid: int) -> bool:
        return self.path.exists()


@pytest.fixture
def replicas(nats: ManagedServer, redis: ManagedServer, tmp_path: Path) -> Iterator[tuple[str, list[Supervised]]]:
    """Two scheduler replicas in processes of their own, counting under a prefix of this test's."""
    prefix = f"timer-test-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "ZAPFLOW_NATS_URL": nats.url,
        "ZAPFLOW_REDIS_URL": f"{redis.url}/0",
        "ZAPFLOW_LOG_LEVEL": "WARNING",
    }
    started = []
    for name in ("a", "b"):
        ready = tmp_path / f"replica-{name}.ready"
        argv = [sys.executable, "-m", "tests.support.timer_replica", "--name", name, "--counts", prefix]
        argv += ["--ready", str(ready), "--ack-wait", str(REPLICA_ACK_WAIT_S)]
        spec = ProcessSpec(
            f"replica-{name}", argv, tmp_path / f"replica-{name}.log", WroteFile(ready), env=env, cwd=ROOT
        )
        started.append(Supervised(spec))
    yield prefix, started
    for replica in started:
        replica.stop()


@pytest.mark.timeout(90)
async def test_two_replicas_one_sigkilled_mid_run_every_due_timer_fires_exactly_once(
    js: JetStreamContext, timers: Timers, redis_client: Redis, replicas: tuple[str, list[Supervised]], tenant: str
) -> None:
    prefix, (killed, survivor) = replicas
    await asyncio.gather(asyncio.to_thread(killed.start), asyncio.to_thread(survivor.start))
    start = datetime.now(UTC)
    keys_due = [f"k{index:03d}" for index in range(REPLICA_TIMERS)]
    await asyncio.gather(
        *(
            timers.schedule(
                timer_replica.KIND, tenant, key, start + timedelta(seconds=0.5 + 3.0 * index / REPLICA_TIMERS)
            )
            for index, key in enumerate(keys_due)
        )
    )

    async def calls() -> list[tuple[str, str]]:
        return [tuple(call.split()) for call in await redis_client.lrange(timer_replica.calls_list(prefix), 0, -1)]  # type: ignore[misc]

    async def halfway() -> bool:
        made = await calls()
        return len(made) >= REPLICA_TIMERS // 2 and {name for name, _ in made} == {"a", "b"}

    async def every_timer_counted() -> bool:
        return await redis_client.hlen(timer_replica.effects_hash(prefix)) == REPLICA_TIMERS

    await eventually(halfway, what="both replicas handling timers, half of them handled")
    killed.kill()
    await eventually(every_timer_counted, timeout=30, what="every timer counted")
    await eventually(lambda: settled(js), what="every fired timer acknowledged")

    assert await redis_client.hgetall(timer_replica.effects_hash(prefix)) == {key: "1" for key in keys_due}
    runs: dict[str, list[str]] = {}
    for name, key in await calls():
        runs.setdefault(key, []).append(name)
    assert sorted(runs) == keys_due
    # A second run only for what the killed replica was in the middle of; the survivor never repeats
    # a timer it finished, and nothing runs a third time.
    repeated = {key: names for key, names in runs.items() if len(names) > 1}
    assert all(names == ["a", "b"] for names in repeated.values()), repeated
    print(f"{REPLICA_TIMERS} timers, {sum(len(names) for names in runs.values())} runs, {len(repeated)} run twice")


async def test_bad_timers_are_refused_with_a_reason(timers: Timers, tenant: str) -> None:
    with pytest.raises(ValueError, match="subject token"):
        await timers.schedule(NUDGE, tenant, "55.11", soon(1))
    with pytest.raises(ValueError, match="subject token"):
        await timers.schedule("nudge>", tenant, "5511", soon(1))
    with pytest.raises(ValueError, match="timezone-aware"):
        await timers.schedule(NUDGE, tenant, "5511", datetime.now())  # naive: the mistake under test
    with pytest.raises(ValueError, match="at least 0"):
        LatePolicy(max_lateness_s=-1)
    timers.on(NUDGE, Handled(), ALWAYS)
    with pytest.raises(ValueError, match="already"):
        timers.on(NUDGE, Handled(), ALWAYS)


async def test_a_kind_without_a_handler_is_retried_for_another_replica(nc: NATS, timers: Timers, tenant: str) -> None:
    timer = Timer(timer_id="t1", kind="unknown", tenant=tenant, key="k")
    fired = Msg(nc, subject=catalogue.due_subject("unknown", tenant, "k"), data=timer.SerializeToString())
    with pytest.raises(bus.RetryLater, match="no handler"):
        await timers.handle(timer, fired)
