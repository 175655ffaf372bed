"""A campaign through the whole platform: the runner, the real gateway's egress, the sandbox as Meta, and
the send results and delivery statuses coming back, with the runner SIGKILLed in its crash window."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from nats.js import JetStreamContext

from tests.support.platform import eventually, running_platform
from zapflow.platform.connections import Needs, connected
from zapflow.platform.settings import CoreSettings
from zapflow.scheduler.campaigns import RESEND_AFTER, SLICE, CampaignResults, CampaignRunner
from zapflow.store.campaigns import NewCampaign, NewRecipient, Progress
from zapflow.tenants.registry import TenantRegistry

# Runs one slice, and hangs in the publish after `published` commands: at that moment the slice's
# recipients are all marked sending, the first ones' commands are on the bus, the rest are not.
KILLED_RUNNER = """
import asyncio
import sys
from datetime import UTC, datetime

from zapflow.platform import bus
from zapflow.platform.connections import Needs, connected
from zapflow.platform.settings import CoreSettings
from zapflow.scheduler.campaigns import CampaignRunner

nats_url, redis_url, database_url, campaign_id, published = sys.argv[1:]
original = bus.publish
calls = 0


async def publish_until_killed(js, subject, message, msg_id, timeout=5.0):
    global calls
    if calls == int(published):
        print("published", flush=True)
        await asyncio.Event().wait()
    calls += 1
    return await original(js, subject, message, msg_id, timeout)


bus.publish = publish_until_killed


async def main():
    core = CoreSettings(nats_url=nats_url, redis_url=redis_url, database_url=database_url)
    async with connected("killed-runner", core, Needs(database=True)) as connections:
        runner = CampaignRunner(connections.database, connections.js, connections.redis, connections.registry)
        await runner.advance(campaign_id, datetime.now(UTC))


asyncio.run(main())
"""


def run_and_kill(core: CoreSettings, campaign_id: str, published: int) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [core.nats_url, core.redis_url, core.database_url, campaign_id, str(published)]
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUNNER, *argv], stdout=subprocess.PIPE, env=env, text=True
    )  # fmt: skip
    try:
        assert child.stdout is not None
        # Its log lines come first, on the same stdout.
        if not any(line.strip() == "published" for line in child.stdout):
            raise AssertionError("the runner ended before it was killed")
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()


@pytest.mark.timeout(180)
async def test_a_campaign_to_500_with_20_opted_out_sends_480_once_across_a_runner_killed_mid_slice(
    core: CoreSettings, registry: TenantRegistry, js: JetStreamContext
) -> None:
    messaging = {"messaging": {"messagingLimit": 100_000, "campaignShare": 1}}
    # 200 messages a second, all of them for campaigns: slices of 400.
    async with (
        running_platform(core, registry, messages_per_second=200, spec=messaging) as platform,
        connected("campaign-tests", core, Needs(database=True)) as connections,
    ):
        tenant = platform.tenant.name
        runner = CampaignRunner(connections.database, connections.js, connections.redis, connections.registry)
        await CampaignResults(runner.store).start(connections)
        contacts = [f"5511977{i:06d}" for i in range(500)]
        opted_out = set(contacts[::25])
        for contact in opted_out:
            await runner.store.opt_out(tenant, contact, "import", datetime.now(UTC))
        new = NewCampaign(tenant, "december", "promo_dec", "pt_BR", "marketing", datetime.now(UTC), "cli")
        recipients = [NewRecipient(contact, {"body.1": contact[-4:]}) for contact in contacts]
        campaign = await runner.store.create(new, recipients, datetime.now(UTC))

        run_and_kill(core, campaign.id, published=150)
        stuck = await runner.store.progress(campaign.id, datetime.now(UTC))
        assert stuck is not None and stuck.by_status["sending"] == 400 - stuck.by_status["skipped"]

        # The next runner, once the killed one's recipients are stale, sends the rest slice by slice.
        at = datetime.now(UTC) + RESEND_AFTER + timedelta(seconds=1)
        due = await runner.advance(campaign.id, at)
        while due is not None and due - at <= SLICE:
            at = due
            due = await runner.advance(campaign.id, at)

        async def finished() -> Progress | None:
            progress = await runner.store.progress(campaign.id, datetime.now(UTC))
            return progress if progress is not None and progress.campaign.status == "done" else None

        done = await eventually(finished, timeout=60, what="every send result back and the campaign done")
        delivered = await eventually(
            lambda: _all_delivered(runner, campaign.id), timeout=30, what="every delivery status back"
        )
        answer = await platform.sandbox.get("/sandbox/messages", params={"phone_number_id": platform.number})
        sent = Counter(message["to"] for message in answer.json()["messages"])

    assert sent == Counter({contact: 1 for contact in contacts if contact not in opted_out})
    assert {state: count for state, count in done.by_status.items() if count}.keys() <= {"sent", "delivered", "skipped"}
    assert delivered.by_status["delivered"] == 480
    assert [(o.status, o.reason, o.count) for o in delivered.outcomes] == [("skipped", "opted_out", 20)]


async def _all_delivered(runner: CampaignRunner, campaign_id: str) -> Progress | None:
    progress = await runner.store.progress(campaign_id, datetime.now(UTC))
    return progress if progress is not None and progress.by_status["delivered"] == 480 else None
