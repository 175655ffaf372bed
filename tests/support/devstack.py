"""`zapflow dev` run as a developer runs it, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

DEMO_NUMBER = "100000000000001"
DEMO_TENANT = "demo"


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
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        messages = httpx.get(f"{dev.sandbox}/sandbox/messages", params={"to": customer}).json()["messages"]
        if len(messages) >= expected_count:
            return [
                m["payload"]["text"]["body"] if m["type"] == "text" else m["payload"]["interactive"]["body"]["text"]
                for m in messages
            ]
        time.sleep(0.1)
    raise AssertionError(f"no reply to {text!r}")
