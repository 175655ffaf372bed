"""Real nats-server and redis-server processes on free ports, owned by one test or session."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from zapflow.dev import find_nats_server, find_redis_server

START_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, log: Path | None = None) -> None:
    """Bounded readiness poll: the server accepts connections, or the test fails with its output."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            if log is not None:
                output = log.read_text(errors="replace")[-4000:]
            else:
                output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            raise RuntimeError(f"{what} exited with {process.returncode}: {output}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"{what} did not listen on {port} within {START_TIMEOUT_S}s")


@dataclass
class ManagedServer:
    """A server process that a test can kill and restart on the same port and data.

    `env` replaces the environment; `log` collects its output in a file that outlives restarts
    (else it goes to a pipe, read when the process fails to start).
    """

    name: str
    scheme: str
    command: list[str]
    port: int
    env: dict[str, str] | None = None
    log: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.log is None:
            self.process = self._spawn(subprocess.PIPE)
        else:
            with self.log.open("ab") as output:  # the child keeps its own descriptor
                self.process = self._spawn(output)
        wait_for_port(self.port, self.process, self.name, self.log)

    def _spawn(self, output: int | IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command, env=self.env, stdout=output, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def nats_server(store_dir: Path) -> ManagedServer:
    port = free_port()
    command = [find_nats_server(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store_dir)]
    return ManagedServer("nats-server", "nats", command, port)


def redis_server(data_dir: Path) -> ManagedServer:
    port = free_port()
    command = [
        find_redis_server(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir),
        "--save", "", "--appendonly", "no",
    ]  # fmt: skip
    return ManagedServer("redis-server", "redis", command, port)
