"""Real processes for tests, on the platform's one supervisor: nats-server and redis-server owned by one
test or session, on ports that are theirs from the start, and the services a test runs itself."""

from __future__ import annotations

import dataclasses
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from zapflow.platform import servers
from zapflow.platform.servers import free_port
from zapflow.platform.supervisor import ProcessSpec, StartError, Supervised, TcpProbe

# A zapflow process imports its whole stack before it listens: on a loaded two-core machine a
# restart after SIGKILL once took over 15 s (a harness limit, not a recovery bound of the tests).
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
# redis-server cannot pick its own port: a port taken between our choice and its bind is retried.
PORT_ATTEMPTS = 5

__all__ = ["ManagedServer", "free_port", "nats_server", "redis_server"]


class ManagedServer:
    """A process that a test can kill and restart on the same port and data.

    Ready when its port accepts connections. `env` replaces the environment; `log` collects its
    output across restarts (by default in a temporary directory), and its tail is in the error
    when the process fails to start.
    """

    def __init__(
        self,
        name: str,
        scheme: str,
        command: Sequence[str],
        port: int,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
    ) -> None:
        self.name = name
        self.scheme = scheme
        self.command = command
        self.port = port
        self.env = env
        self.log = log or Path(tempfile.mkdtemp(prefix=f"zapflow-{name}-")) / f"{name}.log"
        self._supervised: Supervised | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return None if self._supervised is None else self._supervised.process

    def spec(self) -> ProcessSpec:
        return ProcessSpec(self.name, self.command, self.log, TcpProbe(self.port), env=self.env)

    def start(self) -> None:
        # Never restarted by the supervisor: the test decides when a killed process comes back.
        spec = dataclasses.replace(self.spec(), start_timeout_s=START_TIMEOUT_S, stop_timeout_s=STOP_TIMEOUT_S)
        self._supervised = Supervised(spec)
        self._supervised.start()

    def kill(self) -> None:
        if self._supervised is not None:
            self._supervised.kill()

    def stop(self) -> None:
        if self._supervised is not None:
            self._supervised.stop()


class _NatsServer(ManagedServer):
    """nats-server picks a free port at its first start and reports it; restarts keep that port."""

    def __init__(self, store_dir: Path) -> None:
        # No command of its own: it depends on the port (see spec()).
        super().__init__("nats-server", "nats", (), servers.ANY_PORT, log=store_dir.with_name("nats-server.log"))
        self.store_dir = store_dir

    def spec(self) -> ProcessSpec:
        return servers.nats_server(self.name, self.port, self.store_dir, self.log)

    def start(self) -> None:
        super().start()
        if self.port == servers.ANY_PORT:
            assert self.process is not None
            reported = servers.nats_port(self.store_dir, self.process.pid)
            assert reported is not None, "ready, so its ports file was read"
            self.port = reported


class _RedisServer(ManagedServer):
    """redis-server on a free port, and on another when that one was taken before it could bind it."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__("redis-server", "redis", (), free_port(), log=data_dir.with_name("redis-server.log"))
        self.data_dir = data_dir
        self._port_owned = False

    def spec(self) -> ProcessSpec:
        # Nothing on disk: a killed Redis loses everything, the case the recovery tests need.
        return servers.redis_server(self.name, self.port, self.data_dir, self.log, durable=False)

    def start(self) -> None:
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                super().start()
            except StartError as error:
                # Once started, restarts keep the port: the test's clients know that one.
                if self._port_owned or attempt == PORT_ATTEMPTS or not servers.port_was_taken(error):
                    raise
                self.port = free_port()
            else:
                self._port_owned = True
                return


def nats_server(store_dir: Path) -> ManagedServer:
    return _NatsServer(store_dir)


def redis_server(data_dir: Path) -> ManagedServer:
    return _RedisServer(data_dir)
