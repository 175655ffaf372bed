"""`zapflow status` against a real nats-server: figures right after known traffic, replicas seen, the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError
from rich.console import Console

from tests.support.cli import cli_environment, run_zapflow
from tests.support.dead_letters import file_webhook_part
from tests.support.platform import eventually, running_platform
from tests.support.servers import ManagedServer, free_port
from tests.support.tenants import tenant_document
from zapflow import __version__
from zapflow.platform import bus, catalogue
from zapflow.platform.connections import Connections, Needs, connected
from zapflow.platform.settings import CoreSettings
from zapflow.platform.status import KNOWN_SERVICES, ReasonCount, StatusReader, render, watch
from zapflow.tenants.files import parse_tenant
from zapflow.tenants.registry import TenantRegistry
from zapflow.v1 import inbound_pb2, turn_pb2

CUSTOMER = "5511977770001"
MALFORMED, NOT_A_STRING, HANDLER_FAILED = "text: not an object", "status: not a string", "KeyError: 'campaign'"


@contextlib.asynccontextmanager
async def bus_only(core: CoreSettings) -> AsyncIterator[Connections]:
    """The connection `zapflow status` opens: NATS alone."""
    async with connected("status", core, Needs(redis=False, tenants=False), short_lived=True) as connections:
        yield connections


async def dead_letter_from(js: JetStreamContext, service: str, reason: str, seq: int) -> int:
    """A dead letter as bus.Consumer files one; its stream sequence."""
    subject = catalogue.outbound_subject("acme", CUSTOMER)
    letter = turn_pb2.DeadLetter(service=service, consumer="test", original_subject=subject, reason=reason)
    return (await bus.publish(js, catalogue.dead_letter_subject(service, subject), letter, f"test:{seq}")).seq


async def test_streams_consumers_dead_letters_and_tenants_right_after_known_traffic(
    js: JetStreamContext, core: CoreSettings, registry: TenantRegistry
) -> None:
    await bus.ensure_streams(js, catalogue.ALL_STREAMS)
    for index in range(3):
        event = inbound_pb2.InboundMessage(tenant="acme", wamid=f"wamid.{index}")
        await bus.publish(js, catalogue.inbound_subject("acme", CUSTOMER), event, event.wamid)
    spec = catalogue.CONVERSATION_INBOUND
    await js.add_consumer(spec.stream.name, spec.config())
    subscription = await js.pull_subscribe_bind(spec.durable, stream=spec.stream.name)
    delivered = await subscription.fetch(3, timeout=5)
    await delivered[0].nak()
    (again,) = await subscription.fetch(1, timeout=5)  # the only one deliverable: the one refused
    await delivered[1].ack_sync()
    await file_webhook_part(js, "acme", CUSTOMER, b'{"text": 7}', MALFORMED)
    await file_webhook_part(js, "acme", None, b'{"text": 8}', MALFORMED)
    status = await file_webhook_part(js, "acme", CUSTOMER, b'{"status": 12}', NOT_A_STRING, status=True)
    await dead_letter_from(js, catalogue.SCHEDULER_SERVICE, HANDLER_FAILED, 1)
    tenants = [parse_tenant(tenant_document()) for _ in range(2)]
    for tenant in tenants:
        await registry.put(tenant)

    async with bus_only(core) as connections:
        reader = StatusReader(connections, window_s=60)
        snapshot = await reader.read()

        streams = {stream.name: stream for stream in snapshot.streams}
        assert [stream.name for stream in snapshot.streams] == [stream.name for stream in catalogue.ALL_STREAMS]
        assert (streams[catalogue.INBOUND.name].messages, streams[catalogue.INBOUND.name].consumers) == (3, 1)
        assert streams[catalogue.INBOUND.name].bytes > 0
        assert streams[catalogue.DEAD_LETTER.name].messages == 4
        (consumer,) = snapshot.consumers
        assert (consumer.name, consumer.pending, consumer.ack_pending, consumer.redelivered) == (spec.durable, 0, 2, 1)
        assert consumer.last_active is not None
        assert again.metadata.num_delivered == 2
        assert snapshot.dead_letters == [
            ReasonCount(catalogue.GATEWAY_SERVICE, MALFORMED, 2),
            ReasonCount(catalogue.GATEWAY_SERVICE, NOT_A_STRING, 1),
            ReasonCount(catalogue.SCHEDULER_SERVICE, HANDLER_FAILED, 1),
        ]
        assert sorted(tenant.name for tenant in snapshot.tenants) == sorted(tenant.name for tenant in tenants)
        assert snapshot.turns.turns == 0

        # Letters filed since are read one by one; a purge is noticed and every letter is counted again.
        await dead_letter_from(js, catalogue.SCHEDULER_SERVICE, HANDLER_FAILED, 2)
        assert (await reader.read()).dead_letters == [
            ReasonCount(catalogue.GATEWAY_SERVICE, MALFORMED, 2),
            ReasonCount(catalogue.SCHEDULER_SERVICE, HANDLER_FAILED, 2),
            ReasonCount(catalogue.GATEWAY_SERVICE, NOT_A_STRING, 1),
        ]
        assert await bus.secure_delete(js, catalogue.DEAD_LETTER.name, status)
        assert (await reader.read()).dead_letters == [
            ReasonCount(catalogue.GATEWAY_SERVICE, MALFORMED, 2),
            ReasonCount(catalogue.SCHEDULER_SERVICE, HANDLER_FAILED, 2),
        ]

    screen = io.StringIO()
    Console(file=screen, width=200).print(render(snapshot))
    shown = screen.getvalue()
    assert all(text in shown for text in (spec.durable, MALFORMED, "dead letters: 4", "tenants: 2", "none seen"))


async def test_running_services_are_seen_with_their_health_and_the_turn_rate_counts_turns(
    js: JetStreamContext, core: CoreSettings, registry: TenantRegistry
) -> None:
    async with running_platform(core, registry) as platform, bus_only(core) as connections:
        turns = await js.subscribe(catalogue.events_of(catalogue.TURN), stream=catalogue.EVENTS.name)
        await platform.say(CUSTOMER, "hello")
        await turns.next_msg(timeout=20)
        reader = StatusReader(connections, window_s=60, follow_tenants=True)
        snapshot = await reader.read()

        services = {service.name: service for service in snapshot.services}
        assert set(KNOWN_SERVICES) <= set(services)
        for name in (catalogue.GATEWAY_SERVICE, catalogue.CONVERSATION_SERVICE):
            (replica,) = services[name].replicas
            assert (replica.version, replica.ready) == (__version__, True)
            assert replica.checks["nats"] and all(replica.checks.values())
            assert 0 <= (snapshot.at - replica.started).total_seconds() < 120
        assert services[catalogue.RECORDER_SERVICE].replicas == []
        assert (snapshot.turns.turns, snapshot.turns.per_second) == (1, 1 / 60)
        assert [tenant.name for tenant in snapshot.tenants] == [platform.tenant.name]

        # The live view refreshes until it is cancelled, as Ctrl-C does.
        screen = io.StringIO()
        live = asyncio.create_task(watch(reader, 0.5, Console(file=screen, width=200, height=200, force_terminal=True)))

        async def shown() -> bool:
            return screen.getvalue().count(platform.tenant.name) >= 2

        await eventually(shown, what="the live view refreshed")
        live.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await live

    async with bus_only(core) as connections:
        after = {service.name: service for service in (await StatusReader(connections, window_s=60).read()).services}
    assert after[catalogue.GATEWAY_SERVICE].replicas == [], "a stopped service withdraws from the service API"


async def test_once_prints_one_json_snapshot_and_an_unreachable_nats_is_one_line(
    nats: ManagedServer, js: JetStreamContext, tmp_path: Path
) -> None:
    await bus.ensure_streams(js, catalogue.ALL_STREAMS)
    await file_webhook_part(js, "acme", CUSTOMER, b'{"text": 7}', MALFORMED)

    result = run_zapflow(
        cli_environment(ZAPFLOW_NATS_URL=nats.url), "status", "--once", "--format", "json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert set(document) == {"at", "turns", "services", "streams", "consumers", "dead_letters", "tenants"}
    assert document["dead_letters"] == {
        "total": 1,
        "by_service": {catalogue.GATEWAY_SERVICE: 1},
        "by_reason": [{"service": catalogue.GATEWAY_SERVICE, "reason": MALFORMED, "count": 1}],
    }
    assert [stream["name"] for stream in document["streams"]] == [stream.name for stream in catalogue.ALL_STREAMS]
    assert [service["name"] for service in document["services"]] == list(KNOWN_SERVICES)
    assert document["tenants"] == {"count": 0, "tenants": []}
    assert document["turns"] == {"window_s": 2.0, "count": 0, "per_second": 0.0}
    with pytest.raises(BucketNotFoundError):  # a status creates nothing
        await js.key_value(CoreSettings().tenant_bucket)

    nowhere = f"nats://127.0.0.1:{free_port()}"
    refused = run_zapflow(cli_environment(ZAPFLOW_NATS_URL=nowhere), "status", "--once", cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stdout == ""
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot reach NATS at {nowhere}: ")
