"""`zapflow dead-letters list|show|purge` as an operator runs them, against a real nats-server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from tests.support.cli import cli_environment, run_zapflow
from tests.support.dead_letters import file_webhook_part
from tests.support.platform import eventually
from tests.support.servers import ManagedServer
from zapflow.platform import bus, catalogue
from zapflow.platform.servers import zapflow_command
from zapflow.v1 import inbound_pb2

# A dozen `zapflow` processes per test, each paying Python's start-up: on a loaded machine
# (two test workers on two cores) that alone nears the default 120 s.
pytestmark = pytest.mark.timeout(300)

ACME, GLOBEX = "acme", "globex"
CUSTOMER = "5511977770001"
DLQ = catalogue.DEAD_LETTER.name


async def dead_letter_through_a_consumer(js: JetStreamContext, tenant: str, contact: str) -> int:
    """A customer message a real consumer rejects: dead-lettered by bus.Consumer; its stream sequence."""
    spec = catalogue.ConsumerSpec(
        catalogue.INBOUND, "dead-letters-test", catalogue.INBOUND.subjects[0], catalogue.RECORDER_SERVICE
    )
    letters = await js.subscribe(catalogue.dead_letters_of(spec.service), stream=DLQ)

    async def rejects(_: inbound_pb2.InboundMessage, __: Msg) -> None:
        raise bus.Reject("a test consumer refuses every message")

    consumer = bus.Consumer(js, spec, inbound_pb2.InboundMessage, rejects)
    await consumer.start()
    try:
        event = inbound_pb2.InboundMessage(tenant=tenant, wamid="wamid.REJECTED")
        await bus.publish(js, catalogue.inbound_subject(tenant, contact), event, "wamid.REJECTED")
        return (await letters.next_msg(timeout=20)).metadata.sequence.stream
    finally:
        await consumer.stop()
        await letters.unsubscribe()


def dead_letters(nats: ManagedServer, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_zapflow(cli_environment(ZAPFLOW_NATS_URL=nats.url), "dead-letters", *args, cwd=cwd)


def listed(nats: ManagedServer, cwd: Path, *filters: str) -> list[int]:
    """The sequences `list --json` gives, in its order."""
    result = dead_letters(nats, cwd, "list", "--json", *filters)
    assert result.returncode == 0, result.stderr
    return [letter["seq"] for letter in json.loads(result.stdout)["dead_letters"]]


async def test_dead_letters_are_listed_newest_first_filtered_and_shown(
    nats: ManagedServer, js: JetStreamContext, tmp_path: Path
) -> None:
    await bus.ensure_streams(js, catalogue.ALL_STREAMS)
    whole_body = b'{"object": "whatsapp_business_account", "entry": [{"changes": "not a list"}]}'
    unreadable = await file_webhook_part(js, ACME, None, whole_body, "entry[0].changes: not a list")
    malformed = await file_webhook_part(
        js, ACME, CUSTOMER, b'{"from": "' + CUSTOMER.encode() + b'", "type": "text", "text": 7}', "text: not an object"
    )
    status = await file_webhook_part(js, GLOBEX, CUSTOMER, b'{"status": 12}', "status: not a string", status=True)
    rejected = await dead_letter_through_a_consumer(js, ACME, CUSTOMER)
    binary = await file_webhook_part(js, GLOBEX, None, b"\xff\xfe\x00binary", "not JSON: not UTF-8")

    assert listed(nats, tmp_path) == [binary, rejected, status, malformed, unreadable]
    assert listed(nats, tmp_path, "--tenant", ACME) == [rejected, malformed, unreadable]
    assert listed(nats, tmp_path, "--tenant", ACME, "--service", catalogue.GATEWAY_SERVICE) == [malformed, unreadable]
    assert listed(nats, tmp_path, "--service", catalogue.RECORDER_SERVICE) == [rejected]
    assert listed(nats, tmp_path, "--consumer", catalogue.WEBHOOK_DEAD_LETTERS) == [
        binary,
        status,
        malformed,
        unreadable,
    ]
    assert listed(nats, tmp_path, "--contact", CUSTOMER) == [rejected, status, malformed]
    assert listed(nats, tmp_path, "--contact", catalogue.UNATTRIBUTED, "--tenant", ACME) == [unreadable]
    assert listed(nats, tmp_path, "--limit", "2") == [binary, rejected]

    document = json.loads(dead_letters(nats, tmp_path, "list", "--json", "--limit", "1", "--tenant", ACME).stdout)
    assert document["matched"] == 3
    [newest] = document["dead_letters"]
    assert newest["consumer"] == "dead-letters-test"
    assert newest["original_subject"] == catalogue.inbound_subject(ACME, CUSTOMER)
    assert (newest["tenant"], newest["contact"], newest["deliveries"]) == (ACME, CUSTOMER, 1)
    assert newest["reason"] == "a test consumer refuses every message"

    table = dead_letters(nats, tmp_path, "list", "--tenant", ACME)
    assert table.returncode == 0, table.stderr
    assert "text: not an object" in table.stdout and "3 of 3 dead letters, newest first" in table.stdout
    assert "no dead letters" in dead_letters(nats, tmp_path, "list", "--tenant", "initech").stdout

    shown = dead_letters(nats, tmp_path, "show", str(unreadable))
    assert shown.returncode == 0, shown.stderr
    assert whole_body.decode() in shown.stdout
    assert f"{len(whole_body)} bytes, UTF-8 text" in shown.stdout
    assert "entry[0].changes: not a list" in shown.stdout  # a reason with brackets is not taken for markup
    assert catalogue.inbound_subject(ACME, catalogue.UNATTRIBUTED) in shown.stdout

    shown_binary = dead_letters(nats, tmp_path, "show", str(binary))
    assert "not UTF-8, in hex" in shown_binary.stdout
    assert "ff fe 00 62 69 6e 61 72 79" in shown_binary.stdout


async def test_a_hostile_payload_cannot_drive_the_terminal(
    nats: ManagedServer, js: JetStreamContext, tmp_path: Path
) -> None:
    await bus.ensure_streams(js, catalogue.ALL_STREAMS)
    hostile = '{"text": "\x1b]0;owned\x07\x1b[2J right\u202eto left\u200b"}'
    seq = await file_webhook_part(js, ACME, None, hostile.encode(), "reason with \x1b[31m colour")

    shown = dead_letters(nats, tmp_path, "show", str(seq))

    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\u202e" not in shown.stdout and "\u200b" not in shown.stdout
    assert "\\x1b]0;owned\\x07\\x1b[2J right\\u202eto left\\u200b" in shown.stdout
    assert "reason with \\x1b[31m colour" in shown.stdout
    listing = dead_letters(nats, tmp_path, "list")
    assert "\x1b" not in listing.stdout and "\\x1b[31m" in listing.stdout


async def test_purge_erases_one_or_a_tenants_and_nothing_else(
    nats: ManagedServer, js: JetStreamContext, tmp_path: Path
) -> None:
    await bus.ensure_streams(js, catalogue.ALL_STREAMS)
    # The purged letters lie between kept ones: a plain delete of the first message of a block
    # also drops its bytes, one in the middle only an erase does.
    first_kept = await file_webhook_part(js, GLOBEX, CUSTOMER, b'{"marker": "kept-first"}', "bad status", status=True)
    one = await file_webhook_part(js, ACME, None, b'{"marker": "purged-by-sequence"}', "unreadable")
    acme_gateway = await file_webhook_part(js, ACME, CUSTOMER, b'{"marker": "purged-with-acme"}', "bad text")
    acme_recorder = await dead_letter_through_a_consumer(js, ACME, CUSTOMER)
    last_kept = await file_webhook_part(js, GLOBEX, None, b'{"marker": "kept-last"}', "unreadable")
    store = tmp_path / "jetstream"  # the nats fixture's store directory
    purged_markers = (b"purged-by-sequence", b"purged-with-acme")

    def on_disk(marker: bytes) -> bool:
        return any(marker in path.read_bytes() for path in store.rglob("*") if path.is_file())

    # The letters reach the block files first, so their absence afterwards means they were erased.
    await eventually(
        lambda: _true(all(on_disk(marker) for marker in (*purged_markers, b"kept-first", b"kept-last"))),
        what="the dead letters written to the stream's files",
    )

    purged = dead_letters(nats, tmp_path, "purge", "--seq", str(one), "--yes")
    assert purged.returncode == 0, purged.stderr
    assert f"purged dead letter {one}" in purged.stdout
    assert listed(nats, tmp_path) == [last_kept, acme_recorder, acme_gateway, first_kept]

    by_service = dead_letters(nats, tmp_path, "purge", "--tenant", ACME, "--service", catalogue.GATEWAY_SERVICE, "-y")
    assert by_service.returncode == 0, by_service.stderr
    assert "purged 1 dead letters of tenant acme from service gateway" in by_service.stdout
    assert listed(nats, tmp_path) == [last_kept, acme_recorder, first_kept]

    whole_tenant = dead_letters(nats, tmp_path, "purge", "--tenant", ACME, "--yes")
    assert "purged 1 dead letters of tenant acme" in whole_tenant.stdout
    assert listed(nats, tmp_path) == [last_kept, first_kept]

    await eventually(
        lambda: _true(not any(on_disk(marker) for marker in purged_markers)),
        what="the purged dead letters overwritten in the stream's files",
    )
    assert on_disk(b"kept-first") and on_disk(b"kept-last")


async def _true(condition: bool) -> bool | None:
    return True if condition else None


def test_purge_asks_first_and_needs_one_target(nats: ManagedServer, tmp_path: Path) -> None:
    declined = subprocess.run(
        zapflow_command("dead-letters", "purge", "--tenant", ACME),
        env=cli_environment(ZAPFLOW_NATS_URL=nats.url),
        cwd=tmp_path,
        input="n\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert declined.returncode == 1
    assert "nothing purged" in declined.stderr
    for args, reason in (
        ((), "give either --seq N or --tenant T"),
        (("--seq", "1", "--tenant", ACME), "give either --seq N or --tenant T"),
        (("--seq", "1", "--service", catalogue.GATEWAY_SERVICE), "--service goes with --tenant"),
        (("--tenant", "Not A Tenant", "--yes"), "not a tenant name"),
    ):
        result = dead_letters(nats, tmp_path, "purge", *args)
        assert result.returncode == 1, args
        assert reason in result.stderr and "Traceback" not in result.stderr, result.stderr


async def test_what_cannot_be_answered_is_a_clear_message(
    nats: ManagedServer, js: JetStreamContext, tmp_path: Path
) -> None:
    no_stream = dead_letters(nats, tmp_path, "list")
    assert no_stream.returncode == 1
    assert f"no stream {DLQ} on this server" in no_stream.stderr and "Traceback" not in no_stream.stderr

    await bus.ensure_streams(js, catalogue.ALL_STREAMS)
    for args, reason in (
        (("show", "999"), "no dead letter at sequence 999"),
        (("purge", "--seq", "999", "--yes"), "no dead letter at sequence 999"),
        (("list", "--tenant", "Not A Tenant"), "not a tenant name"),
        (("list", "--contact", "+55 11"), "not a contact"),
    ):
        result = dead_letters(nats, tmp_path, *args)
        assert result.returncode == 1, args
        assert reason in result.stderr and "Traceback" not in result.stderr, result.stderr

    unreachable = run_zapflow(
        cli_environment(ZAPFLOW_NATS_URL="nats://127.0.0.1:1"), "dead-letters", "list", cwd=tmp_path
    )
    assert unreachable.returncode == 1
    assert "cannot reach NATS at nats://127.0.0.1:1" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
