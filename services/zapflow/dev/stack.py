"""Running the plan: start in order, keep every process up, stop on Ctrl-C or on a crash loop."""

from __future__ import annotations

import signal
import threading
from dataclasses import fields
from importlib import resources
from pathlib import Path
from types import FrameType

from rich.console import Console

from zapflow.dev.plan import RESTART, DevPlan, DevPorts
from zapflow.dev.sheet import event_line, startup_sheet
from zapflow.platform import servers, stackfile
from zapflow.platform.supervisor import (
    CommandFailed,
    ProcessEvent,
    StartError,
    Supervised,
    Supervisor,
    run_to_completion,
)

DEMO_TENANT = resources.files(__package__).joinpath("demo-tenant.yaml")


class DevStackError(Exception):
    """The stack cannot start or cannot go on; the message says why and what to do."""


class DevStack:
    def __init__(self, plan: DevPlan, console: Console) -> None:
        self.plan = plan
        self.console = console
        self.supervisor = Supervisor(self._on_event)
        self._finished = threading.Event()
        self._crash_looping: Supervised | None = None

    def _on_event(self, event: ProcessEvent) -> None:
        line = event_line(event)
        if line is not None:
            self.console.print(line)
        if event.kind == "gave up":
            self._crash_looping = self.supervisor.processes[event.name]
            self._finished.set()

    def start(self) -> None:
        taken = [
            f"{f.name} ({getattr(self.plan.ports, f.name)})"
            for f in fields(self.plan.ports)
            if not servers.port_is_free(getattr(self.plan.ports, f.name))
        ]
        if taken:
            raise DevStackError(
                "port already in use: " + ", ".join(taken) + ". Stop what uses it or pick another, "
                "e.g. zapflow dev --gateway-port 9000 (see zapflow dev --help)"
            )
        for sub in ("nats", "redis", "logs"):
            (self.plan.data_dir / sub).mkdir(parents=True, exist_ok=True)
        try:
            self.supervisor.start(*self.plan.servers())
            stackfile.record(self.plan.data_dir, self.plan.addresses)
            self._run_once("migrating the database", "db", "upgrade")
            self.plan.tenant_file.write_text(
                DEMO_TENANT.read_text().format(sandbox_url=self.plan.url(self.plan.ports.sandbox))
            )
            self._run_once("applying the demo tenant", "tenant", "apply", "-f", str(self.plan.tenant_file))
            self.supervisor.start(*self.plan.services())
        except (servers.ServerNotFound, StartError, CommandFailed) as error:
            raise DevStackError(str(error)) from None

    def _run_once(self, what: str, *args: str) -> None:
        run_to_completion(what, servers.zapflow_command(*args), self.plan.environment(), self.plan.data_dir)

    def watch(self) -> None:
        """Block until Ctrl-C / SIGTERM, or until a process crash-loops (then say which, and why)."""

        def request_stop(_signum: int, _frame: FrameType | None) -> None:
            self._finished.set()

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        while not self._finished.wait(timeout=0.5):  # short waits: the signal handlers run in between
            pass
        crashed = self._crash_looping
        if crashed is not None:
            raise DevStackError(
                f"{crashed.name} keeps stopping: {RESTART.crash_loop_restarts + 1} exits within "
                f"{RESTART.crash_loop_window_s:.0f} s, so the stack stops. Its log {crashed.spec.log} ends with:\n"
                f"{crashed.log_tail()}"
            )

    def stop(self) -> None:
        self.supervisor.stop()


def run_dev_stack(data_dir: Path, ports: DevPorts, console: Console) -> None:
    stack = DevStack(DevPlan(data_dir, ports), console)
    try:
        console.print(f"starting zapflow in [bold]{data_dir}[/] ...")
        stack.start()
        console.print(startup_sheet(stack.plan))
        stack.watch()
    finally:
        console.print("stopping ...")
        stack.stop()
        console.print("stopped.")
