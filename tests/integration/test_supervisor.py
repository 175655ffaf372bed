"""The one supervisor with real processes: restarts with a growing delay, giving up on a crash loop,
children that die with their parent, and servers that own their port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import psutil
import redis

from tests.support.devstack import poll_until
from tests.support.servers import redis_server
from zapflow.platform.supervisor import OnFailure, ProcessEvent, ProcessSpec, Supervised

# Writes when it started (CLOCK_MONOTONIC, the same clock in every process) and exits with an
# error once the supervisor has had time to see it ready.
CRASHING = "import os, sys, time; open(sys.argv[1] + '/' + str(os.getpid()), 'w').write(repr(time.monotonic())); time.sleep(0.5); sys.exit(3)"  # noqa: E501


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_crashing_process_is_restarted_later_each_time_until_it_crash_loops(tmp_path: Path) -> None:
    policy = OnFailure(first_delay_s=0.4, max_delay_s=10.0, crash_loop_restarts=3, crash_loop_window_s=60.0)
    spec = ProcessSpec(
        "crasher",
        [sys.executable, "-I", "-S", "-c", CRASHING, str(tmp_path)],
        tmp_path / "crasher.log",
        probe=lambda pid: (tmp_path / str(pid)).exists(),
        restart=policy,
    )
    events: list[ProcessEvent] = []
    gave_up = threading.Event()

    def observe(event: ProcessEvent) -> None:
        events.append(event)
        if event.kind == "gave up":
            gave_up.set()

    crasher = Supervised(spec, observe)
    crasher.start()
    assert gave_up.wait(timeout=60), [e.kind for e in events]

    assert [e.kind for e in events] == [
        *["exited", "restarting", "ready again"] * 3,
        "exited",
        "gave up",
    ]
    assert crasher.gave_up and crasher.restarts == 3
    assert all(e.exit_code == 3 for e in events if e.kind == "exited")
    started = sorted(float(marker.read_text()) for marker in tmp_path.iterdir() if marker.name.isdigit())
    assert len(started) == 4, "nothing is started after giving up"
    exits = [e.at for e in events if e.kind == "exited"]
    waits = [start - exit_ for exit_, start in zip(exits, started[1:], strict=False)]
    assert [e.delay_s for e in events if e.kind == "restarting"] == [0.4, 0.8, 1.6]
    for waited, delay in zip(waits, (0.4, 0.8, 1.6), strict=True):
        assert waited >= delay, waits
    assert waits[0] < waits[1] < waits[2], f"the delay grows: {waits}"


PARENT = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from zapflow.platform.supervisor import OnFailure, Supervised, ProcessSpec

    back = threading.Event()
    spec = ProcessSpec(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(600)"], Path(sys.argv[1]),
        probe=lambda pid: True, restart=OnFailure(first_delay_s=0.1),
    )
    sleeper = Supervised(spec, lambda event: event.kind == "ready again" and back.set())
    sleeper.start()
    print(sleeper.pid, flush=True)
    sleeper.kill()  # its restart is started by the supervisor's thread, not by this one
    back.wait()
    print(sleeper.pid, flush=True)
    threading.Event().wait()
    """
)


def test_children_die_with_their_parent_even_when_it_is_sigkilled(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "sleeper.log")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        first, restarted = int(parent.stdout.readline()), int(parent.stdout.readline())
        assert first != restarted and alive(restarted)
        assert os.getsid(restarted) == restarted, "in a session of its own: Ctrl-C reaches the supervisor only"
        parent.kill()
        parent.wait()
        poll_until(lambda: True if not alive(restarted) else None, timeout=10, what="the child's death")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_redis_takes_another_port_when_its_own_was_taken_before_it_could_bind(tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    server = redis_server(tmp_path / "redis")
    chosen = server.port
    with socket.socket() as squatter:
        # Something else listens on the chosen port: it accepts connections, but it is not Redis.
        squatter.bind(("127.0.0.1", chosen))
        squatter.listen()
        server.start()
        try:
            assert server.port != chosen
            assert server.process is not None
            with redis.Redis.from_url(server.url) as client:
                assert client.info("server")["process_id"] == server.process.pid
            assert "Address already in use" in server.log.read_text()
            owned = server.port
            server.kill()
            server.start()
            assert server.port == owned, "a restart keeps the port its clients know"
        finally:
            server.stop()


def test_a_stopped_process_is_not_restarted(tmp_path: Path) -> None:
    events: list[ProcessEvent] = []
    spec = ProcessSpec(
        "sleeper",
        [sys.executable, "-c", "import time; time.sleep(600)"],
        tmp_path / "sleeper.log",
        probe=lambda pid: True,
        restart=OnFailure(first_delay_s=0.01),
    )
    sleeper = Supervised(spec, events.append)
    sleeper.start()
    pid = sleeper.pid
    sleeper.stop()
    assert sleeper.exited() == -signal.SIGTERM
    assert not alive(pid)
    assert sleeper.pid == pid and events == []
