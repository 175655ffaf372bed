"""The processes under test: nats-server, redis-server and the zapflow services, on loopback.

They run on the platform's supervisor with the command lines `zapflow dev` uses
(zapflow.platform.servers), but are never restarted: a process that dies fails the run with its
log's tail. `Stack.stop()` (the caller's `finally`) stops every one, and each dies with the bench
even when it is SIGKILLed. Ports are free ones picked by the kernel unless a base port is given,
in which case a taken port is a clear error before anything starts.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from zapflow.platform import servers
from zapflow.platform.servers import free_port, port_is_free
from zapflow.platform.settings import CoreSettings
from zapflow.platform.supervisor import (
    CommandFailed,
    ProcessSpec,
    StartError,
    Supervised,
    Supervisor,
    run_to_completion,
    settings_environment,
)
from zapflow.sandbox.settings import SandboxSettings
from zapflow.store.engine import sqlite_url

HINT = "--base-port (or leave it out: free ports are then picked)"

__all__ = ["BenchError", "Ports", "ResourceMonitor", "Stack", "free_port"]


class BenchError(Exception):
    """The bench cannot go on; the message says why."""


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


def died(proc: Supervised) -> BenchError:
    return BenchError(
        f"{proc.name} exited with code {proc.exited()}; its log {proc.spec.log} ends with:\n{proc.log_tail()}"
    )


@dataclass
class Stack:
    workdir: Path
    ports: Ports
    supervisor: Supervisor = field(default_factory=Supervisor)

    @property
    def procs(self) -> dict[str, Supervised]:
        """Every process started so far, by name; each has `pid`, `exited()` and `log_tail()`."""
        return self.supervisor.processes

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

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    def env(self) -> dict[str, str]:
        # Only our settings: a ZAPFLOW_* variable of the caller's shell must not change the run
        # (model_construct: exactly these values, none read from the bench's own environment).
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZAPFLOW_")}
        core = CoreSettings.model_construct(
            environment="development",
            nats_url=self.nats_url,
            redis_url=self.redis_url,
            database_url=sqlite_url(self.workdir),
            log_level="WARNING",
            log_json=True,
        )
        env.update(settings_environment(core))
        # The load's webhooks go straight to the gateway: the sandbox never sees its customers write.
        sandbox = SandboxSettings.model_construct(core=core, statuses="off", enforce_window=False)
        env.update(settings_environment(sandbox))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _start(self, *specs: ProcessSpec) -> None:
        try:
            self.supervisor.start(*specs)
        except (StartError, servers.ServerNotFound) as error:
            raise BenchError(str(error)) from None

    def _check_free(self, name: str, port: int) -> None:
        if not port_is_free(port):
            raise BenchError(f"port already in use: {name} ({port}); stop what listens there or pick another {HINT}")

    # --- the servers and the services ---

    def start_infra(self) -> None:
        """NATS, then Redis, as `zapflow dev` runs them (Redis durable: the bench pays what dev pays)."""
        for name, port in (("nats", self.ports.nats), ("redis", self.ports.redis)):
            (self.workdir / name).mkdir(parents=True, exist_ok=True)
            self._check_free(name, port)
        self._start(servers.nats_server("nats", self.ports.nats, self.workdir / "nats", self.logs / "nats.log"))
        self._start(
            servers.redis_server(
                "redis", self.ports.redis, self.workdir / "redis", self.logs / "redis.log", durable=True
            )
        )

    def apply_tenants(self, tenant_file: Path) -> None:
        """Migrate the store, then apply the tenants, as `zapflow dev` does."""
        self._zapflow_once("db", "upgrade")
        self._zapflow_once("tenant", "apply", "-f", str(tenant_file))

    def _zapflow_once(self, *args: str) -> None:
        try:
            run_to_completion(f"zapflow {' '.join(args)}", servers.zapflow_command(*args), self.env(), self.workdir)
        except CommandFailed as error:
            raise BenchError(str(error)) from None

    def _service(self, name: str, port: int, *options: str) -> ProcessSpec:
        self._check_free(name, port)
        service = name.split("-")[0]
        log = self.logs / f"{name}.log"
        env = self.env()
        return servers.zapflow_service(name, service, port, *options, log=log, env=env, cwd=self.workdir)

    def start_edge(self, tenant_file: Path) -> None:
        """The sandbox (as Meta) and the gateway."""
        sandbox = self._service(
            "sandbox",
            self.ports.sandbox,
            "--webhook-url",
            self.webhook_url,
            "-f",
            str(tenant_file),
        )
        self._start(sandbox, self._service("gateway", self.ports.gateway))

    def start_conversations(self, record: bool) -> None:
        """The conversation replicas, and the recorder writing the relational store unless told not to."""
        services = [(f"conversation-{i}", port) for i, port in enumerate(self.ports.conversations)]
        if record:
            services.append(("recorder", self.ports.recorder))
        self._start(*(self._service(name, port) for name, port in services))

    def check_alive(self) -> None:
        for proc in self.procs.values():
            if proc.exited() is not None:
                raise died(proc)

    def stop(self) -> None:
        """Services first (they drain), then Redis and NATS; every process, whatever happened."""
        try:
            self.supervisor.stop()
        except ExceptionGroup as errors:
            for error in errors.exceptions:
                print(f"warning: stopping: {error}", file=sys.stderr)


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
        found = {}
        for name, proc in self._stack.procs.items():
            if proc.process is not None and proc.exited() is None:
                with contextlib.suppress(psutil.Error):
                    found[name] = psutil.Process(proc.pid)
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
