"""Fixtures of the end-to-end suite: a `zapflow dev` stack on free ports in a fresh data directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.devstack import DevProcess
from tests.support.servers import free_port


@pytest.fixture
def ports() -> dict[str, int]:
    return {
        name: free_port()
        for name in (
            "gateway",
            "conversation",
            "recorder",
            "scheduler",
            "embedding",
            "handoff",
            "sandbox",
            "nats",
            "redis",
        )
    }


@pytest.fixture
def dev(tmp_path: Path, ports: dict[str, int]) -> Iterator[DevProcess]:
    running = DevProcess(tmp_path / "data", ports)
    yield running
    if running.process.poll() is None:
        # Ctrl-C, as a developer stops it: the services drain and the servers close their files.
        running.interrupt()
