"""The one process supervisor: `zapflow dev`, the benchmark and the tests run their processes with it.

A `ProcessSpec` says what to run (argv, environment, log file), how to tell that it is ready (a
probe) and what to do when it exits on its own: nothing, or restart it with a growing delay until
it crash-loops, as the kubelet does. Every child gets a session of its own, so that Ctrl-C reaches
the supervisor only and it stops its children in order, and a parent-death signal, so that a
supervisor killed with SIGKILL leaves no process behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import httpx
import pydantic_core
from pydantic import SecretStr
from pydantic_settings import BaseSettings, NoDecode

PROBE_INTERVAL_S = 0.05
LOG_TAIL_CHARS = 2500


class StartError(Exception):
    """A process could not start, exited before it was ready, or was not ready in time."""


class CommandFailed(Exception):
    """A command run to completion exited with an error; the message holds its output."""


class Probe(Protocol):
    """Readiness: called with the process's pid until it answers True."""

    def __call__(self, pid: int) -> bool: ...


@dataclass(frozen=True)
class TcpProbe:
    """Ready when the port accepts a connection."""

    port: int
    host: str = "127.0.0.1"

    def __call__(self, pid: int) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def __str__(self) -> str:
        return f"{self.host}:{self.port} accepting connections"


@dataclass(frozen=True)
class HttpProbe:
    """Ready when the URL (a service's /readyz or /healthz) answers 200."""

    url: str

    def __call__(self, pid: int) -> bool:
        try:
            return httpx.get(self.url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def __str__(self) -> str:
        return f"{self.url} answering 200"


@dataclass(frozen=True)
class OnFailure:
    """Restart a process that exits without being asked to, after a delay that doubles with each
    recent failure. Any such exit is a failure, whatever its code: these processes are meant to
    run until they are stopped. More than `crash_loop_restarts` failures within
    `crash_loop_window_s` is a crash loop, and the supervisor gives up. Failures older than the
    window are forgotten, so a process that has run well for a while starts again from the first
    delay.
    """

    first_delay_s: float = 0.5
    max_delay_s: float = 8.0
    crash_loop_restarts: int = 5
    crash_loop_window_s: float = 60.0

    def delay(self, recent_failures: int) -> float | None:
        """The wait before restarting after this many failures within the window; None: a crash loop."""
        if recent_failures > self.crash_loop_restarts:
            return None
        return min(self.max_delay_s, self.first_delay_s * 2.0 ** (recent_failures - 1))


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: Sequence[str]
    # Output and errors, appended across restarts.
    log: Path
    probe: Probe
    # The whole environment of the child (see settings_environment); None: this process's own.
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    # None: never restarted; the owner sees the exit and decides.
    restart: OnFailure | None = None
    start_timeout_s: float = 60.0
    # SIGTERM, then SIGKILL after this long.
    stop_timeout_s: float = 10.0


EventKind = Literal["exited", "restarting", "ready again", "gave up", "killed at stop"]


@dataclass(frozen=True)
class ProcessEvent:
    name: str
    kind: EventKind
    restarts: int
    exit_code: int | None = None
    delay_s: float | None = None
    at: float = field(default_factory=time.monotonic)


Observer = Callable[[ProcessEvent], None]


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:  # a real-time signal has no name
            return f"killed by signal {-code}"
    return f"exit code {code}"


# PR_SET_PDEATHSIG through libc (Linux); elsewhere children are still stopped in order, only not
# after a SIGKILL of the supervisor.
_PRCTL = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """The child's last step before exec: be SIGKILLed when the thread that started it ends.

    SIGKILL because the platform is built to lose nothing to one. The kernel sends it when the
    starting *thread* ends, not the process: so a process is always started by the thread that
    watches it (Supervised._supervise), which lives as long as it does.
    """
    if _PRCTL is None:
        return None
    prctl, parent = _PRCTL, os.getpid()

    def in_child() -> None:  # one C call and no lock: safe between fork and exec
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL.value)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return in_child


def _spawn(
    argv: Sequence[str], output: int, env: Mapping[str, str] | None, cwd: Path | None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 - the callers' own binaries and interpreter
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        env=None if env is None else dict(env),
        cwd=cwd,
        start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops its children in order
        preexec_fn=_die_with_parent(),
    )


class Supervised:
    """One process of a spec, watched by a thread of its own that restarts it as its policy says."""

    def __init__(self, spec: ProcessSpec, observer: Observer | None = None) -> None:
        self.spec = spec
        self.restarts = 0
        self.gave_up = False
        self.process: subprocess.Popen[bytes] | None = None
        self._observer = observer
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._start_error: StartError | None = None
        self._thread: threading.Thread | None = None
        self._failures: deque[float] = deque()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.process.pid

    def exited(self) -> int | None:
        """The current process's exit code; None while it runs (or before it started)."""
        return None if self.process is None else self.process.poll()

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            return self.spec.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self) -> None:
        """Start the process and wait until it is ready (StartError otherwise)."""
        self.launch()
        self.wait_started()

    def launch(self) -> None:
        """Start the process in the background; `wait_started` tells how that went."""
        if self._thread is not None and self._thread.is_alive():
            if self.spec.restart is not None or self.exited() is None:
                raise RuntimeError(f"{self.name} is already running")
            self._thread.join()  # it is only reporting the exit
        self._stopping.clear()
        self._started.clear()
        self._start_error = None
        self.gave_up = False
        self._thread = threading.Thread(target=self._supervise, name=f"supervise {self.name}", daemon=True)
        self._thread.start()

    def wait_started(self) -> None:
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error

    def kill(self) -> None:
        """SIGKILL the running process, as a crash would; the restart policy then applies."""
        with self._lock:
            process = self.process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after the spec's stop timeout; nothing is restarted afterwards."""
        with self._lock:
            self._stopping.set()
            process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=self.spec.stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                self._emit("killed at stop", process.returncode)
        if self._thread is not None:
            self._thread.join()

    def _supervise(self) -> None:
        try:
            self._start_once()
        except StartError as error:
            self._start_error = error
        finally:
            self._started.set()
        if self._start_error is None:
            self._watch()

    def _watch(self) -> None:
        while self.process is not None:
            code = self.process.wait()
            if self._stopping.is_set():
                return
            self._emit("exited", code)
            policy = self.spec.restart
            if policy is None:
                return
            now = time.monotonic()
            self._failures.append(now)
            while self._failures[0] < now - policy.crash_loop_window_s:
                self._failures.popleft()
            delay = policy.delay(len(self._failures))
            if delay is None:
                self.gave_up = True
                self._emit("gave up", code)
                return
            self._emit("restarting", code, delay_s=delay)
            if self._stopping.wait(delay):
                return
            self.restarts += 1
            try:
                self._start_once()
            except StartError:
                continue  # it exited, or was killed for not being ready: the next failure
            if self._stopping.is_set():
                return
            self._emit("ready again")

    def _start_once(self) -> None:
        """Spawn on this thread (see _die_with_parent) and wait until the probe says ready."""
        self.spec.log.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self._stopping.is_set():
                return
            with self.spec.log.open("ab") as log:  # the child keeps its own descriptor
                try:
                    process = _spawn(self.spec.argv, log.fileno(), self.spec.env, self.spec.cwd)
                except OSError as error:
                    raise StartError(f"cannot start {self.name} ({self.spec.argv[0]}): {error}") from error
            self.process = process
        deadline = time.monotonic() + self.spec.start_timeout_s
        while not self._stopping.is_set():
            if process.poll() is not None:
                raise StartError(
                    f"{self.name} exited ({describe_exit(process.returncode)}) before it was ready; "
                    f"its log {self.spec.log} ends with:\n{self.log_tail()}"
                )
            if self.spec.probe(process.pid):
                return
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise StartError(
                    f"{self.name} was not ready within {self.spec.start_timeout_s:.0f} s "
                    f"(waiting for {self.spec.probe}); see {self.spec.log}"
                )
            self._stopping.wait(PROBE_INTERVAL_S)

    def _emit(self, kind: EventKind, exit_code: int | None = None, delay_s: float | None = None) -> None:
        if self._observer is not None:
            self._observer(ProcessEvent(self.name, kind, self.restarts, exit_code, delay_s))


class Supervisor:
    """The processes of one owner: started together, stopped in the reverse order."""

    def __init__(self, observer: Observer | None = None) -> None:
        self.processes: dict[str, Supervised] = {}
        self._observer = observer

    def start(self, *specs: ProcessSpec) -> list[Supervised]:
        """Start these processes at once and wait until each is ready (StartError otherwise)."""
        started = []
        for spec in specs:
            if spec.name in self.processes:
                raise ValueError(f"a process named {spec.name} is already supervised")
            self.processes[spec.name] = Supervised(spec, self._observer)
            started.append(self.processes[spec.name])
        for process in started:
            process.launch()
        for process in started:
            process.wait_started()
        return started

    def stop(self) -> None:
        """Stop every process, the last started first, whatever happens to one of them."""
        errors = []
        for process in reversed(self.processes.values()):
            try:
                process.stop()
            except Exception as error:  # the others must still be stopped
                errors.append(error)
        if errors:
            raise ExceptionGroup("stopping the supervised processes", errors)


def run_to_completion(what: str, argv: Sequence[str], env: Mapping[str, str] | None, cwd: Path | None) -> None:
    """Run a one-off command (a migration, `tenant apply`) as a child of ours; CommandFailed with its output."""
    done = subprocess.run(  # noqa: S603 - the callers' own interpreter and CLI
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=None if env is None else dict(env),
        cwd=cwd,
        check=False,
        start_new_session=True,  # as in _spawn; run() kills the command if we are interrupted
        preexec_fn=_die_with_parent(),
    )
    if done.returncode != 0:
        raise CommandFailed(f"{what} failed ({describe_exit(done.returncode)}):\n{done.stderr or done.stdout}")


def settings_environment(settings: BaseSettings) -> dict[str, str]:
    """The environment variables that give a child process these settings.

    Only the fields set on the instance are rendered (the child keeps its own defaults), each under
    its class's env prefix; a nested settings object (a service's `core`) under its own prefix.
    Build the instance with `model_construct(...)` to render exactly the values given, without
    those this process reads from its own environment.
    """
    prefix = settings.model_config.get("env_prefix", "")
    fields = type(settings).model_fields
    rendered: dict[str, str] = {}
    for name in sorted(settings.model_fields_set):
        value = getattr(settings, name)
        if isinstance(value, BaseSettings):
            rendered.update(settings_environment(value))
        elif value is not None:
            rendered[f"{prefix}{name}".upper()] = _render(value, comma_separated=NoDecode in fields[name].metadata)
    return rendered


def _render(value: object, comma_separated: bool) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if comma_separated and isinstance(value, list):  # a NoDecode field that splits its own value
        return ",".join(str(item) for item in value)
    if isinstance(value, str | Path):
        return str(value)
    # Booleans as true/false, numbers as written, lists and models as JSON: what pydantic-settings reads.
    return pydantic_core.to_json(value).decode()
