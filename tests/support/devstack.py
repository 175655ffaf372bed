"""`zapflow dev` run as a developer runs it, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

DEMO_NUMBER = "100000000000001"
DEMO_TENANT = "demo"
T = TypeVar("T")


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

    def pid_of(self, service: str) -> int:
        """The pid of the service's process now (`python -m zapflow SERVICE ...`, a child of zapflow dev)."""
        for child in psutil.Process(self.process.pid).children():
            if child.cmdline()[3:4] == [service]:
                return child.pid
        raise AssertionError(f"zapflow dev runs no {service} process")


def write(dev: DevProcess, customer: str, text: str) -> None:
    """Write to the demo bot from the web chat; returns once the gateway has accepted the message."""
    sent = httpx.post(
        f"{dev.sandbox}/sandbox/chat/send", json={"phone_number_id": DEMO_NUMBER, "from": customer, "text": text}
    )
    assert sent.status_code == 200 and sent.json()["gateway_status"] == 200, sent.text


def replies(dev: DevProcess, customer: str) -> list[str]:
    """The texts the bot has sent to this customer so far, oldest first."""
    messages: list[dict[str, Any]] = httpx.get(f"{dev.sandbox}/sandbox/messages", params={"to": customer}).json()[
        "messages"
    ]
    return [
        m["payload"]["text"]["body"] if m["type"] == "text" else m["payload"]["interactive"]["body"]["text"]
        for m in messages
    ]


def converse(dev: DevProcess, customer: str, text: str, expected_count: int) -> list[str]:
    """Write to the demo bot from the web chat; the texts of the first `expected_count` replies."""
    write(dev, customer, text)

    def answered() -> list[str] | None:
        texts = replies(dev, customer)
        return texts if len(texts) >= expected_count else None

    return poll_until(answered, timeout=20, what=f"a reply to {text!r}")


def poll_until(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """Call `probe` until it returns something, for at most `timeout` seconds (a process's state)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout:.0f} s")
