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


def converse(dev: DevProcess, customer: str, text: str, expected_count: int) -> list[str]:
    """Write to the demo bot from the web chat; the texts of the first `expected_count` replies."""
    sent = httpx.post(
        f"{dev.sandbox}/sandbox/chat/send", json={"phone_number_id": DEMO_NUMBER, "from": customer, "text": text}
    )
    assert sent.status_code == 200 and sent.json()["gateway_status"] == 200, sent.text

    def replies() -> list[dict[str, Any]] | None:
        messages: list[dict[str, Any]] = httpx.get(f"{dev.sandbox}/sandbox/messages", params={"to": customer}).json()[
            "messages"
        ]
        return messages if len(messages) >= expected_count else None

    return [
        m["payload"]["text"]["body"] if m["type"] == "text" else m["payload"]["interactive"]["body"]["text"]
        for m in poll_until(replies, timeout=20, what=f"a reply to {text!r}")
    ]


def poll_until(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """Call `probe` until it returns something, for at most `timeout` seconds (a process's state)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout:.0f} s")
