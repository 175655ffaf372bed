"""`zapflow dev` as a developer runs it: every process, a message end to end, Ctrl-C, restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.servers import free_port

pytestmark = pytest.mark.slow
CUSTOMER = "5511955554444"
DEMO_NUMBER = "100000000000001"


class DevProcess:
    def __init__(self, data_dir: Path, ports: dict[str, int]) -> None:
        args = [f"--{name}-port={port}" for name, port in ports.items()]
        self.ports = ports
        self.output: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "zapflow", "dev", f"--data-dir={data_dir}", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )

    def wait_for_line(self, marker: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                break
            self.output.append(line)
            if marker in line:
                return
        raise AssertionError(f"no {marker!r} from zapflow dev:\n{''.join(self.output)}")

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        remaining, _ = self.process.communicate(timeout=60)
        self.output.append(remaining)
        return self.process.returncode

    @property
    def sandbox(self) -> str:
        return f"http://127.0.0.1:{self.ports['sandbox']}"


@pytest.fixture
def ports() -> dict[str, int]:
    return {name: free_port() for name in ("gateway", "conversation", "recorder", "sandbox", "nats", "redis")}


@pytest.fixture
def dev(tmp_path: Path, ports: dict[str, int]) -> Iterator[DevProcess]:
    running = DevProcess(tmp_path / "data", ports)
    yield running
    if running.process.poll() is None:
        running.process.kill()
        running.process.wait()


def converse(dev: DevProcess, text: str, expected_count: int) -> list[str]:
    sent = httpx.post(
        f"{dev.sandbox}/sandbox/chat/send", json={"phone_number_id": DEMO_NUMBER, "from": CUSTOMER, "text": text}
    )
    assert sent.status_code == 200 and sent.json()["gateway_status"] == 200, sent.text
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        messages = httpx.get(f"{dev.sandbox}/sandbox/messages", params={"to": CUSTOMER}).json()["messages"]
        if len(messages) >= expected_count:
            return [
                m["payload"]["text"]["body"] if m["type"] == "text" else m["payload"]["interactive"]["body"]["text"]
                for m in messages
            ]
        time.sleep(0.1)
    raise AssertionError(f"no reply to {text!r}")


def port_closed(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_dev_runs_the_platform_answers_and_stops_cleanly_and_keeps_data(dev: DevProcess, tmp_path: Path) -> None:
    dev.wait_for_line("Press Ctrl-C to stop.")
    assert f"http://127.0.0.1:{dev.ports['sandbox']}/" in "".join(dev.output)
    assert "zapflow" in httpx.get(dev.sandbox + "/").text.lower()

    texts = converse(dev, "hello", 1)
    assert texts[0].startswith("Hi! I'm the zapflow demo bot")
    texts = converse(dev, "what are your hours?", 2)
    assert texts[1] == "We're open Monday to Friday, 9:00 to 18:00."

    assert dev.interrupt() == 0, "".join(dev.output)
    assert "stopped." in "".join(dev.output)
    logs = {path.name: path.read_text() for path in (tmp_path / "data" / "logs").glob("*.log")}
    assert {"gateway.log", "conversation.log", "recorder.log", "sandbox.log"} <= logs.keys()
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
        texts = converse(again, "hello", 1)
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
             f"--conversation-port={ports['conversation']}", f"--recorder-port={ports['recorder']}"],
            capture_output=True, text=True, timeout=60, check=False, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
    assert result.returncode == 1
    assert f"port already in use: gateway ({ports['gateway']})" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
