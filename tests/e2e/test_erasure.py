"""The right to be forgotten, end to end: after an erasure through the admin API, no file of the
`zapflow dev` data directory holds the customer's phone number or words, running or stopped."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.devstack import DEMO_TENANT, DevProcess, converse, poll_until
from zapflow.platform import catalogue

# Whole stacks of processes: beside another test worker, start-up alone takes a minute or more.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
FORGOTTEN = "5511977770001"
FORGOTTEN_WORDS = "my passport number is XK-4471-SECRET"
KEPT = "5511977770002"
KEPT_WORDS = "please keep this conversation on file"
ADMIN = {"Authorization": "Bearer changethis"}  # the development default


def files_containing(data_dir: Path, *needles: str) -> dict[str, list[str]]:
    """Which needles each file of the directory holds, as bytes anywhere in it."""
    found: dict[str, list[str]] = {}
    for path in data_dir.rglob("*"):
        if path.is_file():
            contents = path.read_bytes()
            hits = [needle for needle in needles if needle.encode() in contents]
            if hits:
                found[str(path.relative_to(data_dir))] = hits
    return found


def wait_until_recorded(database: Path, customers: int) -> None:
    """Every turn is recorded and every reply read: nothing about these conversations is on its way.

    Each customer writes once and gets the greeting; the sandbox reports it sent, delivered and
    then read, so a recorded "read" is the last event of the conversation.
    """

    def recorded() -> bool | None:
        with sqlite3.connect(database) as conn:
            turns = conn.execute("SELECT count(DISTINCT contact) FROM turns").fetchone()[0]
            read = conn.execute("SELECT count(*) FROM messages WHERE direction = 'outbound' AND status = 'read'")
            replies_read = read.fetchone()[0]
        return True if turns >= customers and replies_read >= customers else None

    poll_until(recorded, timeout=30, what="turns and read receipts in the store")


def archive_now(dev: DevProcess, data_dir: Path) -> None:
    """Close the sessions (as if 30 idle minutes had passed) and archive them with the scheduler's job."""
    with sqlite3.connect(data_dir / "zapflow.db") as conn:
        conn.execute("UPDATE conversations SET status = 'closed', closed_at = opened_at")
    env = {
        **os.environ,
        "ZAPFLOW_NATS_URL": f"nats://127.0.0.1:{dev.ports['nats']}",
        "ZAPFLOW_DATABASE_URL": f"sqlite+aiosqlite:///{data_dir / 'zapflow.db'}",
        "ZAPFLOW_ANALYTICS_PATH": str(data_dir / "analytics.duckdb"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "zapflow", "scheduler", "--once"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    assert "archive: done" in done.stdout


def test_an_erased_customer_leaves_no_trace_in_the_data_directory(dev: DevProcess, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    dev.wait_for_line("Press Ctrl-C to stop.")
    converse(dev, FORGOTTEN, FORGOTTEN_WORDS, 1)
    converse(dev, KEPT, KEPT_WORDS, 1)
    wait_until_recorded(data_dir / "zapflow.db", customers=2)
    archive_now(dev, data_dir)
    before = files_containing(data_dir, FORGOTTEN, FORGOTTEN_WORDS)
    assert any(name.startswith("nats/") for name in before), before  # the search can find them
    assert "zapflow.db" in before or "zapflow.db-wal" in before, before
    assert any(name.startswith("redis/") for name in before), before  # the append-only file

    scheduler = f"http://127.0.0.1:{dev.ports['scheduler']}"
    assert (
        httpx.post(f"{scheduler}/admin/v1/erasures", json={"tenant": DEMO_TENANT, "phone": FORGOTTEN}).status_code
        == 401
    )
    erased = httpx.post(
        f"{scheduler}/admin/v1/erasures",
        json={"tenant": DEMO_TENANT, "phone": f"+{FORGOTTEN}"},
        headers=ADMIN,
        timeout=120,
    )
    assert erased.status_code == 201, erased.text
    record = erased.json()
    assert FORGOTTEN not in erased.text
    assert record["summary"]["streams"][catalogue.INBOUND.name] == 1
    assert record["summary"]["sql"]["rows"]["messages"] >= 2
    assert record["summary"]["analytics"]["sessions"] == 1
    assert "aof" in record["summary"]["redis"]["persistence_rewritten"]

    assert files_containing(data_dir, FORGOTTEN, FORGOTTEN_WORDS) == {}
    kept = files_containing(data_dir, KEPT, KEPT_WORDS)
    assert any(name.startswith("nats/") for name in kept), kept  # the other customer is untouched
    listed = httpx.get(f"{scheduler}/admin/v1/erasures", params={"tenant": DEMO_TENANT}, headers=ADMIN).json()
    assert [entry["id"] for entry in listed] == [record["id"]]

    assert dev.interrupt() == 0, "".join(dev.output)
    # Shutting down writes stream indexes and Redis's files once more: still nothing.
    assert files_containing(data_dir, FORGOTTEN, FORGOTTEN_WORDS) == {}
