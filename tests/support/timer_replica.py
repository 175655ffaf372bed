"""A scheduler replica for the timer tests: the real Timers consumer, with a handler that counts in Redis.

    python -m tests.support.timer_replica --name a --counts PREFIX --ready FILE [--ack-wait 2]

Connects as a service does (ZAPFLOW_NATS_URL, ZAPFLOW_REDIS_URL), registers the kind `count`, starts
the consumer, then writes FILE and runs until SIGTERM. For each fired timer the handler appends
"<name> <key>" to the list PREFIX:calls, then counts the key in the hash PREFIX:effects once per timer
id (as a handler publishing with an id derived from the timer's does), then works a little
longer, so that a SIGKILL lands mid-handler.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
from pathlib import Path

from zapflow.platform import catalogue
from zapflow.platform.connections import Needs, connected
from zapflow.platform.settings import CoreSettings
from zapflow.scheduler.timers import Fired, LatePolicy, Timers
from zapflow.v1.timer_pb2 import Timer

KIND = "count"
# The handler's work after its effect: a Graph API call's time.
WORK_S = 0.05
# Count a key once per timer id: the id's marker and the count change together or not at all.
COUNT_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', 3600) then
  return redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
end
return 0
"""


def calls_list(prefix: str) -> str:
    return f"{prefix}:calls"


def effects_hash(prefix: str) -> str:
    return f"{prefix}:effects"


async def run(name: str, prefix: str, ready: Path, ack_wait_s: float) -> None:
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    needs = Needs(streams=(catalogue.TIMER_STREAM,), tenants=False)
    async with connected(f"timer-replica-{name}", CoreSettings(), needs) as connections:
        redis = connections.redis
        count_once = redis.register_script(COUNT_ONCE)

        async def count(fired: Fired) -> None:
            await redis.rpush(calls_list(prefix), f"{name} {fired.key}")
            await count_once(keys=[f"{prefix}:seen:{fired.timer_id}", effects_hash(prefix)], args=[fired.key])
            await asyncio.sleep(WORK_S)

        timers = Timers(connections.js, redis)
        timers.on(KIND, count, LatePolicy(max_lateness_s=None))
        spec = dataclasses.replace(catalogue.TIMERS, ack_wait_s=ack_wait_s)
        await connections.consume(spec, Timer, timers.handle)
        ready.write_text("consuming")
        await stopping.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--counts", required=True, help="prefix of the test's Redis names")
    parser.add_argument("--ready", type=Path, required=True)
    parser.add_argument("--ack-wait", type=float, default=catalogue.TIMERS.ack_wait_s)
    args = parser.parse_args()
    asyncio.run(run(args.name, args.counts, args.ready, args.ack_wait))


if __name__ == "__main__":
    main()
