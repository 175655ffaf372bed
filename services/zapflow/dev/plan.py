"""The plan of `zapflow dev`: which processes run, on which ports, with which settings."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from zapflow.handoff.settings import HandoffSettings
from zapflow.platform import servers
from zapflow.platform.settings import CoreSettings
from zapflow.platform.stackfile import StackAddresses
from zapflow.platform.supervisor import OnFailure, ProcessSpec, settings_environment
from zapflow.store.engine import sqlite_url

# As the kubelet would, on a laptop's scale: the first restart after half a second, then twice
# as long each time up to 8 s; a sixth exit within a minute is a crash loop, and the stack stops.
RESTART = OnFailure(first_delay_s=0.5, max_delay_s=8.0, crash_loop_restarts=5, crash_loop_window_s=60.0)


@dataclass(frozen=True)
class DevPorts:
    gateway: int = 8000
    conversation: int = 8001
    recorder: int = 8002
    scheduler: int = 8003
    embedding: int = 8004
    handoff: int = 8005
    sandbox: int = 8100
    nats: int = 14222
    redis: int = 16379


@dataclass(frozen=True)
class DevPlan:
    data_dir: Path
    ports: DevPorts

    @property
    def logs(self) -> Path:
        return self.data_dir / "logs"

    @property
    def tenant_file(self) -> Path:
        return self.data_dir / "demo-tenant.yaml"

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}"

    @property
    def addresses(self) -> StackAddresses:
        return StackAddresses(
            nats_url=f"nats://127.0.0.1:{self.ports.nats}",
            redis_url=f"redis://127.0.0.1:{self.ports.redis}/0",
            database_url=sqlite_url(self.data_dir),
            analytics_path=str(self.data_dir / "analytics.duckdb"),
            admin_url=self.url(self.ports.scheduler),
        )

    def environment(self) -> dict[str, str]:
        """The developer's environment, with the stack's own addresses on top."""
        core = CoreSettings.model_construct(environment="development", log_json=True, **self.addresses.settings())
        return {**os.environ, **settings_environment(core)}

    def servers(self) -> list[ProcessSpec]:
        """NATS and Redis, restarted on the same port and data when they stop."""
        return [
            servers.nats_server("nats", self.ports.nats, self.data_dir / "nats", self.logs / "nats.log", RESTART),
            servers.redis_server(
                "redis",
                self.ports.redis,
                self.data_dir / "redis",
                self.logs / "redis.log",
                durable=True,
                restart=RESTART,
            ),
        ]

    def services(self) -> list[ProcessSpec]:
        """Every zapflow service as its own process, as in a cluster, and the sandbox in Meta's place."""
        env = self.environment()

        def service(name: str, port: int, *options: str, own: dict[str, str] | None = None) -> ProcessSpec:
            log = self.logs / f"{name}.log"
            return servers.zapflow_service(
                name, name, port, *options, log=log, env={**env, **(own or {})}, cwd=self.data_dir, restart=RESTART
            )

        # The links in agents' notifications point at the inbox on its port.
        inbox = HandoffSettings.model_construct(public_url=self.url(self.ports.handoff))

        return [
            service("gateway", self.ports.gateway),
            service("conversation", self.ports.conversation),
            service("recorder", self.ports.recorder),
            service("scheduler", self.ports.scheduler),
            service("embedding", self.ports.embedding),
            service("handoff", self.ports.handoff, own=settings_environment(inbox)),
            service(
                "sandbox",
                self.ports.sandbox,
                "--webhook-url", f"{self.url(self.ports.gateway)}/webhook/whatsapp",
                "--tenant-file", str(self.tenant_file),
            ),
        ]  # fmt: skip
