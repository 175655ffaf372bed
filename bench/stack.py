"""The processes under test: nats-server, redis-server and the zapflow services, on loopback.

Every process the bench starts is recorded here and stopped by `Stack.stop()` (the caller's
`finally`); each child also gets PR_SET_PDEATHSIG, so even a SIGKILLed bench leaves nothing
behind. Ports are free ones picked by the kernel unless a base port is given, in which case a
taken port is a clear error before anything starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from zapflow.dev import find_nats_server, find_redis_server

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
HINT = "--base-port (or leave it out: free ports are then picked)"


class BenchError(Exception):
    """The bench cannot go on; the message says why."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the bench process goes away."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Proc:
    name: str
    command: list[str]
    log: Path
    env: dict[str, str]
    cwd: Path
    popen: subprocess.Popen[bytes] | None = None
    ps: psutil.Process | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # Ctrl-C reaches the bench only; it stops children in order
                preexec_fn=_die_with_parent,  # the child runs no threads yet
            )
        self.ps = psutil.Process(self.popen.pid)

    def exited(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def tail(self, chars: int = 2500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def died(self) -> BenchError:
        return BenchError(f"{self.name} exited with code {self.exited()}; its log {self.log} ends with:\n{self.tail()}")

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=STOP_TIMEOUT_S)


@dataclass
class Ports:
    nats: int
    redis: int
    sandbox: int
    gateway: int
    recorder: int
    conversations: list[int]

    @classmethod
    def choose(cls, base: int | None, replicas: int) -> Ports:
        if base is None:
            return cls(
                free_port(), free_port(), free_port(), free_port(), free_port(), [free_port() for _ in range(replicas)]
            )
        ports = cls(base, base + 1, base + 2, base + 3, base + 4, [base + 5 + i for i in range(replicas)])
        taken = [f"{name} ({port})" for name, port in ports.named() if not port_is_free(port)]
        if taken:
            raise BenchError(f"port already in use: {', '.join(taken)}; stop what listens there or pick another {HINT}")
        return ports

    def named(self) -> list[tuple[str, int]]:
        return [
            ("nats", self.nats),
            ("redis", self.redis),
            ("sandbox", self.sandbox),
            ("gateway", self.gateway),
            ("recorder", self.recorder),
            *((f"conversation-{i}", p) for i, p in enumerate(self.conversations)),
        ]


@dataclass
class Stack:
    workdir: Path
    ports: Ports
    procs: dict[str, Proc] = field(default_factory=dict)

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.ports.nats}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports.redis}/0"

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.sandbox}"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway}/webhook/whatsapp"

    def env(self) -> dict[str, str]:
        # Only our settings: a ZAPFLOW_* variable of the caller's shell must not change the run.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZAPFLOW_")}
        env.update(
            ZAPFLOW_ENVIRONMENT="development",
            ZAPFLOW_NATS_URL=self.nats_url,
            ZAPFLOW_REDIS_URL=self.redis_url,
            ZAPFLOW_DATABASE_URL=f"sqlite+aiosqlite:///{self.workdir / 'zapflow.db'}",
            ZAPFLOW_LOG_LEVEL="WARNING",
            ZAPFLOW_LOG_JSON="true",
            ZAPFLOW_SANDBOX_LOG_LEVEL="WARNING",  # the sandbox reads its own prefix
            ZAPFLOW_SANDBOX_STATUSES="off",
            PYTHONUNBUFFERED="1",
        )
        return env

    def _proc(self, name: str, command: list[str]) -> Proc:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        proc = Proc(name, command, self.workdir / "logs" / f"{name}.log", self.env(), self.workdir)
        self.procs[name] = proc
        proc.start()
        return proc

    def _wait(self, proc: Proc, ready: Any) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.exited() is not None:
                raise proc.died()
            if ready():
                return
            time.sleep(0.05)
        raise BenchError(f"{proc.name} was not ready within {START_TIMEOUT_S:.0f}s; see {proc.log}")

    @staticmethod
    def _tcp(port: int) -> Any:
        def ready() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.3):
                    return True
            except OSError:
                return False

        return ready

    @staticmethod
    def _http(url: str) -> Any:
        def ready() -> bool:
            try:
                return httpx.get(url, timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        return ready

    def _check_free(self, name: str, port: int) -> None:
        if not port_is_free(port):
            raise BenchError(f"port already in use: {name} ({port}); stop what listens there or pick another {HINT}")

    # --- the servers and the services ---

    def start_infra(self) -> None:
        (self.workdir / "nats").mkdir(parents=True, exist_ok=True)
        (self.workdir / "redis").mkdir(parents=True, exist_ok=True)
        self._check_free("nats", self.ports.nats)
        store = str(self.workdir / "nats")
        nats = self._proc(
            "nats", [find_nats_server(), "-a", "127.0.0.1", "-p", str(self.ports.nats), "-js", "-sd", store]
        )
        self._wait(nats, self._tcp(self.ports.nats))
        self._check_free("redis", self.ports.redis)
        # As `zapflow dev` runs it: append-only file (fsync every second), no snapshots.
        redis = self._proc(
            "redis",
            [
                find_redis_server(),
                "--bind", "127.0.0.1", "--port", str(self.ports.redis), "--dir", str(self.workdir / "redis"),
                "--appendonly", "yes", "--save", "",
            ],
        )  # fmt: skip
        self._wait(redis, self._tcp(self.ports.redis))

    def apply_tenants(self, tenant_file: Path) -> None:
        """Migrate the store, then apply the tenants, as `zapflow dev` does."""
        self._zapflow_once("db", "upgrade")
        self._zapflow_once("tenant", "apply", "-f", str(tenant_file))

    def _zapflow_once(self, *args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "zapflow", *args],
            env=self.env(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"zapflow {' '.join(args)} failed:\n{done.stderr or done.stdout}")

    def _service(self, name: str, port: int, *args: str) -> Proc:
        self._check_free(name, port)
        service = name.split("-")[0]
        command = [sys.executable, "-m", "zapflow", service, "--host", "127.0.0.1", "--port", str(port), *args]
        return self._proc(name, command)

    def start_edge(self, tenant_file: Path) -> None:
        """The sandbox (as Meta) and the gateway."""
        sandbox = self._service(
            "sandbox", self.ports.sandbox, "--webhook-url", self.webhook_url, "-f", str(tenant_file)
        )
        gateway = self._service("gateway", self.ports.gateway)
        self._wait(sandbox, self._http(f"{self.sandbox_url}/healthz"))
        self._wait(gateway, self._http(f"http://127.0.0.1:{self.ports.gateway}/readyz"))

    def start_conversations(self, record: bool) -> None:
        """The conversation replicas, and the recorder writing the relational store unless told not to."""
        services = [(f"conversation-{i}", port) for i, port in enumerate(self.ports.conversations)]
        if record:
            services.append(("recorder", self.ports.recorder))
        started = [(self._service(name, port), port) for name, port in services]
        for proc, port in started:
            self._wait(proc, self._http(f"http://127.0.0.1:{port}/readyz"))

    def check_alive(self) -> None:
        for proc in self.procs.values():
            if proc.exited() is not None:
                raise proc.died()

    def stop(self) -> None:
        """Services first (they drain), then Redis and NATS; every process, whatever happened."""
        order = sorted(self.procs.values(), key=lambda p: p.name in ("nats", "redis"))
        for proc in order:
            try:
                proc.stop()
            except Exception as error:  # keep stopping the others
                print(f"warning: stopping {proc.name}: {error}", file=sys.stderr)


# --- resources ---------------------------------------------------------------------------------


@dataclass
class _Usage:
    cpu_start: float = 0.0
    cpu_end: float = 0.0
    rss_peak: int = 0


class ResourceMonitor:
    """Samples RSS of every process (4 Hz, peak kept per phase) and CPU time per phase.

    CPU is exact, not sampled: user+system time consumed between the phase's start and end
    (every thread, e.g. nats-server's), divided by the wall time: 100% = one core busy.
    """

    def __init__(self, stack: Stack, interval_s: float = 0.25) -> None:
        self._stack = stack
        self._interval = interval_s
        self._self = psutil.Process(os.getpid())
        self._lock = threading.Lock()
        self._phase: str | None = None
        self._phase_started = 0.0
        self._usage: dict[str, _Usage] = {}
        self.phases: dict[str, dict[str, Any]] = {}
        self.peak_rss: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resource-monitor", daemon=True)

    def _processes(self) -> dict[str, psutil.Process]:
        found = {name: p.ps for name, p in self._stack.procs.items() if p.ps is not None and p.exited() is None}
        found["loadgen (bench)"] = self._self
        return found

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def sample(self) -> None:
        for name, ps in self._processes().items():
            try:
                rss = ps.memory_info().rss
            except psutil.Error:
                continue
            with self._lock:
                self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss)
                usage = self._usage.get(name)
                if self._phase is not None and usage is not None:
                    usage.rss_peak = max(usage.rss_peak, rss)

    @staticmethod
    def _cpu(ps: psutil.Process) -> float:
        times = ps.cpu_times()
        return float(times.user + times.system)

    def begin(self, phase: str) -> None:
        usage = {}
        for name, ps in self._processes().items():
            with contextlib.suppress(psutil.Error):
                usage[name] = _Usage(cpu_start=self._cpu(ps))
        with self._lock:
            self._phase, self._phase_started, self._usage = phase, time.perf_counter(), usage
        self.sample()

    def end(self) -> dict[str, Any]:
        self.sample()
        with self._lock:
            phase, started, usage = self._phase, self._phase_started, self._usage
            self._phase, self._usage = None, {}
        assert phase is not None
        wall = time.perf_counter() - started
        processes = self._processes()
        report: dict[str, Any] = {}
        for name, entry in usage.items():
            ps = processes.get(name)
            if ps is None:
                continue
            with contextlib.suppress(psutil.Error):
                entry.cpu_end = self._cpu(ps)
            report[name] = {
                "cpu_pct_of_one_core": round(100 * (entry.cpu_end - entry.cpu_start) / wall, 1),
                "peak_rss_mib": round(entry.rss_peak / 2**20, 1),
            }
        total = sum(r["cpu_pct_of_one_core"] for r in report.values())
        self.phases[phase] = {"wall_s": round(wall, 2), "processes": report, "total_cpu_pct": round(total, 1)}
        return self.phases[phase]
