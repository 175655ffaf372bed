"""The campaign runner and its results handler on real NATS, Redis and SQLite, with a clock the test moves.

Egress does not run here: what the runner publishes is read back from ZF_OUTBOUND, and the send
results and delivery statuses egress and Meta would produce are fed to the handler directly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from tests.support.platform import eventually
from tests.support.tenants import make_tenant
from zapflow.platform import bus, catalogue, keys
from zapflow.platform.connections import Connections, Needs, connected
from zapflow.platform.settings import CoreSettings
from zapflow.scheduler.campaigns import RESEND_AFTER, SLICE, CampaignResults, CampaignRunner
from zapflow.store.campaigns import CampaignInfo, NewCampaign, NewRecipient, Progress
from zapflow.tenants.model import BotTenant
from zapflow.v1 import inbound_pb2
from zapflow.v1 import outbound_pb2 as pb

DAY = timedelta(hours=24)


@pytest.fixture
async def connections(core: CoreSettings) -> AsyncIterator[Connections]:
    streams = (catalogue.OUTBOUND, catalogue.EVENTS, catalogue.STATUS)
    async with connected("campaign-tests", core, Needs(streams=streams, database=True)) as opened:
        yield opened


@pytest.fixture
def runner(connections: Connections) -> CampaignRunner:
    return CampaignRunner(connections.database, connections.js, connections.redis, connections.registry)


async def a_tenant(connections: Connections, limit: int | str = "unlimited", per_second: float = 1000) -> BotTenant:
    tenant = make_tenant(
        spec={
            "rateLimits": {"messagesPerSecond": per_second},
            "messaging": {"messagingLimit": limit, "campaignShare": 1},
        }
    )
    await connections.registry.put(tenant)
    await eventually(lambda: _named(connections, tenant.name), what="the tenant in the registry's live view")
    return tenant


async def _named(connections: Connections, name: str) -> BotTenant | None:
    return connections.registry.by_name(name)


async def a_campaign(
    runner: CampaignRunner, tenant: str, contacts: list[str], now: datetime, category: str = "marketing"
) -> CampaignInfo:
    new = NewCampaign(tenant, "promo", "promo_dec", "pt_BR", category, now, "cli")
    recipients = [NewRecipient(contact, {"body.1": f"customer {contact[-3:]}"}) for contact in contacts]
    return await runner.store.create(new, recipients, now)


async def published(js: JetStreamContext, tenant: str) -> list[pb.OutboundCommand]:
    """Every command on the tenant's outbound subjects, in stream order."""
    commands: list[pb.OutboundCommand] = []
    seq = 1
    while True:
        try:
            found = await js.get_msg(
                catalogue.OUTBOUND.name, seq=seq, subject=catalogue.outbound_subject(tenant, "*"), next=True
            )
        except NotFoundError:
            return commands
        if found.seq is None:
            return commands
        commands.append(pb.OutboundCommand.FromString(found.data or b""))
        seq = found.seq + 1


async def progress_of(runner: CampaignRunner, campaign_id: str, now: datetime) -> Progress:
    progress = await runner.store.progress(campaign_id, now)
    assert progress is not None
    return progress


def result(
    command: pb.OutboundCommand, outcome: str, at: datetime, code: int = 0, wamid: str = ""
) -> pb.OutboundResult:
    report = pb.OutboundResult(
        command_id=command.command_id,
        tenant=command.tenant,
        contact=command.contact,
        result=outcome,
        wamid=wamid,
        error_code=code,
        error_title=f"error {code}" if code else "",
    )
    report.at.FromDatetime(at)
    return report


def delivery(
    tenant: str, contact: str, wamid: str, state: str, at: datetime, code: int = 0
) -> inbound_pb2.StatusUpdate:
    errors = [inbound_pb2.StatusError(code=code, title=f"error {code}")] if code else []
    update = inbound_pb2.StatusUpdate(tenant=tenant, contact=contact, wamid=wamid, status=state, errors=errors)
    update.at.FromDatetime(at)
    return update


def delivered_times(count: int) -> Msg:
    """What the handler reads of a delivery: how many times it was delivered."""
    return cast(Msg, SimpleNamespace(metadata=SimpleNamespace(num_delivered=count)))


def states(progress: Progress) -> dict[str, int]:
    return {state: count for state, count in progress.by_status.items() if count}


async def test_a_tier_of_250_holds_the_rest_until_the_window_moves(
    connections: Connections, runner: CampaignRunner
) -> None:
    tenant = await a_tenant(connections, limit=250)
    now = datetime.now(UTC)
    # Customers who wrote an hour ago are inside their window: they cost no place of the limit.
    writing = [f"55119000000{i:02d}" for i in range(10)]
    silent = [f"5511980000{i:03d}" for i in range(300)]
    for contact in writing:
        await connections.redis.set(
            keys.ContactKeys(tenant.name, contact).window, (now - timedelta(hours=1)).timestamp()
        )
    campaign = await a_campaign(runner, tenant.name, writing + silent, now)

    held_until = await runner.advance(campaign.id, now)

    assert held_until is not None and now + DAY < held_until < now + DAY + timedelta(seconds=1)
    commands = await published(connections.js, tenant.name)
    assert len(commands) == 260  # the 10 inside their window, and 250 outside it
    waiting = await progress_of(runner, campaign.id, now)
    assert (waiting.campaign.status, waiting.campaign.next_at) == ("waiting", held_until)
    assert waiting.campaign.reason == (
        f"messaging limit 250 reached; next customer can be reached at {held_until:%Y-%m-%d %H:%M:%S} UTC"
    )
    assert states(waiting) == {"queued": 50, "sending": 260}
    by_contact = {command.contact: command for command in commands}
    inside = by_contact[writing[0]]
    assert (
        inside.window_closes_at.ToDatetime(UTC)
        == datetime.fromtimestamp((now - timedelta(hours=1)).timestamp(), UTC) + DAY
    )
    assert not by_contact[silent[0]].HasField("window_closes_at")
    assert inside.template.name == "promo_dec" and inside.template.category == "marketing"
    assert [p.text for p in inside.template.components[0].parameters] == ["customer 000"]

    results = CampaignResults(runner.store)
    for command in commands:  # as egress reports them, seconds later
        await results.on_result(result(command, "sent", now, wamid=f"wamid.{command.contact}"))

    # Still inside the moving 24 hours: nothing more goes, and it says until when.
    assert await runner.advance(campaign.id, now + timedelta(hours=23)) == held_until
    assert len(await published(connections.js, tenant.name)) == 260

    after = held_until + timedelta(seconds=1)
    assert await runner.advance(campaign.id, after) == after + RESEND_AFTER  # waiting for the send results
    commands = await published(connections.js, tenant.name)
    assert sorted(command.contact for command in commands) == sorted(writing + silent)  # each once
    assert (await progress_of(runner, campaign.id, after)).campaign.status == "running"

    # A customer already counted in the last 24 hours costs nothing: 50 of them and 200 new fill the tier.
    later = after + timedelta(minutes=1)
    newcomers = [f"5511970000{i:03d}" for i in range(201)]
    second = await a_campaign(runner, tenant.name, silent[-50:] + newcomers, later)
    second_held = await runner.advance(second.id, later)
    assert second_held is not None and second_held > later + DAY - timedelta(minutes=2)
    assert states(await progress_of(runner, second.id, later)) == {"sending": 250, "queued": 1}


async def test_a_slice_sends_at_the_campaigns_share_of_the_numbers_rate(
    connections: Connections, runner: CampaignRunner
) -> None:
    tenant = await a_tenant(connections, per_second=10)  # all of it for campaigns: 20 per 2-second slice
    now = datetime.now(UTC)
    campaign = await a_campaign(runner, tenant.name, [f"551196000{i:04d}" for i in range(45)], now)

    assert await runner.advance(campaign.id, now) == now + SLICE
    assert len(await published(connections.js, tenant.name)) == 20
    assert await runner.advance(campaign.id, now + SLICE) == now + 2 * SLICE
    assert await runner.advance(campaign.id, now + 2 * SLICE) == now + 2 * SLICE + RESEND_AFTER
    assert len(await published(connections.js, tenant.name)) == 45


async def test_opted_out_customers_are_never_sent_and_stopped_marketing_only_for_marketing(
    connections: Connections, runner: CampaignRunner
) -> None:
    tenant = await a_tenant(connections)
    now = datetime.now(UTC)
    opted_out, stopped, ok = "5511950000001", "5511950000002", "5511950000003"
    await runner.store.opt_out(tenant.name, opted_out, "keyword", now)
    await runner.store.stop_marketing(tenant.name, stopped, now)
    marketing = await a_campaign(runner, tenant.name, [opted_out, stopped, ok], now)
    utility = await a_campaign(runner, tenant.name, [opted_out, stopped], now, category="utility")

    await runner.advance(marketing.id, now)
    await runner.advance(utility.id, now)

    sent = Counter(command.contact for command in await published(connections.js, tenant.name))
    assert sent == {ok: 1, stopped: 1}  # the stopped one by the utility template only
    skipped = await progress_of(runner, marketing.id, now)
    assert [(o.status, o.reason, o.count) for o in skipped.outcomes] == [
        ("skipped", "marketing_stopped", 1),
        ("skipped", "opted_out", 1),
    ]


async def test_results_and_statuses_move_recipients_and_metas_refusals_are_acted_on(
    connections: Connections, runner: CampaignRunner
) -> None:
    tenant = await a_tenant(connections)
    results = CampaignResults(runner.store)
    now = datetime.now(UTC)
    delivered, stopped, limited, human = (f"551194000000{i}" for i in range(4))
    campaign = await a_campaign(runner, tenant.name, [delivered, stopped, limited, human], now)
    await runner.advance(campaign.id, now)
    commands = {command.contact: command for command in await published(connections.js, tenant.name)}

    # A status that overtakes its send result waits for it (a redelivery), and is not lost.
    early = delivery(tenant.name, delivered, "wamid.d", "delivered", now)
    with pytest.raises(bus.RetryLater):
        await results.on_status(early, delivered_times(1))
    await results.on_result(result(commands[delivered], "sent", now, wamid="wamid.d"))
    await results.on_status(early, delivered_times(2))
    await results.on_status(delivery(tenant.name, delivered, "wamid.d", "read", now), delivered_times(1))
    await results.on_result(result(commands[delivered], "sent", now, wamid="wamid.d"))  # redelivered: no change
    await results.on_result(result(commands[stopped], "marketing_stopped", now, code=131050))
    await results.on_result(result(commands[limited], "marketing_limited", now, code=131049))
    held = result(commands[human], "skipped", now)
    held.error_title = "a person has the conversation"
    await results.on_result(held)
    # Someone else's command and a status of an unknown message are not a campaign's.
    await results.on_result(pb.OutboundResult(command_id="turn-1:0", tenant=tenant.name, result="sent"))
    await results.on_status(delivery(tenant.name, "5511999999999", "wamid.other", "read", now), delivered_times(1))

    progress = await progress_of(runner, campaign.id, now)
    assert states(progress) == {"read": 1, "failed": 1, "skipped": 1, "queued": 1}
    assert [(o.status, o.reason, o.error_code) for o in progress.outcomes] == [
        ("failed", "marketing_stopped", 131050),
        ("skipped", "human", None),
    ]
    assert (progress.deferred, progress.next_retry_at) == (1, now + DAY)
    assert (await runner.store.preferences(tenant.name, [stopped]))[stopped].marketing_stopped_at == now

    # 131049: tried again, under a new command id, a day later; then the campaign is done.
    assert await runner.advance(campaign.id, now + timedelta(hours=1)) == now + DAY
    assert await runner.advance(campaign.id, now + DAY) == now + DAY + RESEND_AFTER
    retried = [c for c in await published(connections.js, tenant.name) if c.contact == limited]
    assert [c.command_id.rsplit(":", 1)[1] for c in retried] == ["0", "1"]
    await results.on_result(result(retried[1], "sent", now + DAY, wamid="wamid.l"))
    done = await progress_of(runner, campaign.id, now + DAY)
    assert (done.campaign.status, done.campaign.next_at) == ("done", None)
    assert await runner.advance(campaign.id, now + DAY) is None

    # 131050 reported late, by a failed status: the same as by the send result.
    await results.on_status(delivery(tenant.name, limited, "wamid.l", "failed", now + DAY, code=131050), None)
    assert (await runner.store.preferences(tenant.name, [limited]))[limited].marketing_stopped_at == now + DAY


async def test_a_refused_template_fails_the_campaign_with_metas_reason(
    connections: Connections, runner: CampaignRunner
) -> None:
    tenant = await a_tenant(connections, per_second=1)  # a slice of 2: the rest waits
    results = CampaignResults(runner.store)
    now = datetime.now(UTC)
    campaign = await a_campaign(runner, tenant.name, [f"551193000000{i}" for i in range(5)], now)
    assert await runner.advance(campaign.id, now) == now + SLICE
    first, second = await published(connections.js, tenant.name)

    await results.on_result(result(first, "template_rejected", now, code=132001))
    await results.on_result(result(second, "sent", now, wamid="wamid.s"))  # already on its way: still reported

    failed = await progress_of(runner, campaign.id, now)
    assert failed.campaign.status == "failed"
    assert failed.campaign.reason == (
        "Meta refused the template (error 132001: error 132001); fix it in WhatsApp Manager"
    )
    assert states(failed) == {"failed": 1, "sent": 1, "queued": 3}
    assert await runner.advance(campaign.id, now + SLICE) is None
    assert len(await published(connections.js, tenant.name)) == 2


async def test_a_runner_killed_after_claiming_is_followed_by_one_that_publishes_the_same_commands(
    connections: Connections, runner: CampaignRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = await a_tenant(connections)
    now = datetime.now(UTC)
    campaign = await a_campaign(runner, tenant.name, [f"551192000000{i}" for i in range(6)], now)
    calls: list[str] = []
    original = bus.publish

    async def dies_on_the_fourth(js: JetStreamContext, subject: str, message: Any, msg_id: str) -> Any:
        calls.append(msg_id)
        if len(calls) == 4:
            raise ConnectionError("killed")
        return await original(js, subject, message, msg_id)

    monkeypatch.setattr(bus, "publish", dies_on_the_fourth)
    with pytest.raises(ConnectionError):
        await runner.advance(campaign.id, now)
    monkeypatch.setattr(bus, "publish", original)
    assert states(await progress_of(runner, campaign.id, now)) == {"sending": 6}

    # Too early to tell a dead runner from a slow egress: nothing is published twice meanwhile.
    await runner.advance(campaign.id, now + SLICE)
    assert len(await published(connections.js, tenant.name)) == 3
    await runner.advance(campaign.id, now + RESEND_AFTER + SLICE)

    # The first three again under their ids, which JetStream drops as duplicates: each once.
    commands = await published(connections.js, tenant.name)
    assert sorted(c.command_id for c in commands) == [f"cp:{campaign.id}:551192000000{i}:0" for i in range(6)]
