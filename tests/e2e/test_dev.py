"""`zapflow dev` as a developer runs it: every process, a message end to end, a killed service, Ctrl-C, restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.devstack import DevProcess, converse, poll_until, replies, write

# Whole stacks of processes: beside another test worker, start-up alone takes a minute or more.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
CUSTOMER = "5511955554444"
CROWD = [f"5511966{i:06d}" for i in range(20)]
GREETING = "Hi! I'm the zapflow demo bot"
HOURS = "We're open Monday to Friday, 9:00 to 18:00."


def port_closed(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_dev_runs_the_platform_answers_and_stops_cleanly_and_keeps_data(dev: DevProcess, tmp_path: Path) -> None:
    dev.wait_for_line("Press Ctrl-C to stop.")
    assert f"http://127.0.0.1:{dev.ports['sandbox']}/" in "".join(dev.output)
    assert "zapflow" in httpx.get(dev.sandbox + "/").text.lower()

    texts = converse(dev, CUSTOMER, "hello", 1)
    assert texts[0].startswith("Hi! I'm the zapflow demo bot")
    texts = converse(dev, CUSTOMER, "what are your hours?", 2)
    assert texts[1] == "We're open Monday to Friday, 9:00 to 18:00."

    assert dev.interrupt() == 0, "".join(dev.output)
    assert "stopped." in "".join(dev.output)
    logs = {path.name: path.read_text() for path in (tmp_path / "data" / "logs").glob("*.log")}
    services = ("gateway", "conversation", "recorder", "scheduler", "embedding", "handoff", "sandbox")
    assert {f"{service}.log" for service in services} <= logs.keys()
    assert '"event": "turn answered"' in logs["conversation.log"]
    for name, text in logs.items():
        assert CUSTOMER not in text, f"{name} logs the customer's phone number"
        assert "what are your hours" not in text, f"{name} logs a message body"
    assert all(port_closed(port) for port in dev.ports.values())
    assert (tmp_path / "data" / "nats" / "jetstream").is_dir()
    assert (tmp_path / "data" / "zapflow.db").is_file()  # migrated at start-up

    # Same data directory again: Redis and JetStream state survived, so this contact is not new.
    again = DevProcess(tmp_path / "data", dev.ports)
    try:
        again.wait_for_line("Press Ctrl-C to stop.")
        texts = converse(again, CUSTOMER, "hello", 1)
        assert texts == ["Sorry, I didn't get that. Type *menu* to see what I can do."]
    finally:
        assert again.interrupt() == 0, "".join(again.output)


def test_a_taken_port_gives_a_clear_message(tmp_path: Path, ports: dict[str, int]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports["gateway"]))
        squatter.listen()
        result = subprocess.run(
            [sys.executable, "-m", "zapflow", "dev", f"--data-dir={tmp_path}", f"--gateway-port={ports['gateway']}",
             f"--sandbox-port={ports['sandbox']}", f"--nats-port={ports['nats']}", f"--redis-port={ports['redis']}",
             f"--conversation-port={ports['conversation']}", f"--recorder-port={ports['recorder']}",
             f"--scheduler-port={ports['scheduler']}"],
            capture_output=True, text=True, timeout=60, check=False, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
    assert result.returncode == 1
    assert f"port already in use: gateway ({ports['gateway']})" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_killed_service_is_restarted_while_the_others_serve_and_every_customer_is_answered(dev: DevProcess) -> None:
    dev.wait_for_line("Press Ctrl-C to stop.")
    for restart, (text, answer) in enumerate((("hello", GREETING), ("what are your hours?", HOURS)), start=1):
        for customer in CROWD:
            write(dev, customer, text)
        # The burst is accepted and in the conversation service's hands when it dies.
        os.kill(dev.pid_of("conversation"), signal.SIGKILL)
        dev.wait_for_line(f"conversation is ready again (restart {restart})")

        def everyone_answered(count: int = restart) -> dict[str, list[str]] | None:
            texts = {customer: replies(dev, customer) for customer in CROWD}
            return texts if all(len(sent) >= count for sent in texts.values()) else None

        answered = poll_until(everyone_answered, timeout=90, what=f"a reply to every {text!r}")
        for customer, texts in answered.items():
            assert len(texts) == restart, f"{customer} got a duplicate reply: {texts}"
            assert texts[-1].startswith(answer), (customer, texts)

    console = "".join(dev.output)
    assert console.count("conversation exited (killed by SIGKILL); restarting it in") == 2, console
    assert dev.process.poll() is None, "the stack stopped"
    for service in ("gateway", "conversation", "recorder", "scheduler"):
        assert httpx.get(f"http://127.0.0.1:{dev.ports[service]}/readyz").status_code == 200, service
    assert dev.interrupt() == 0, "".join(dev.output)
