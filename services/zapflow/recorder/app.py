"""`zapflow recorder`: the process that keeps the relational store current from the bus.

A process of its own rather than a part of the conversation service: the bench measured that
recording in the engine's process doubled its CPU and pushed turn latency past its target.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from zapflow.platform.connections import Connections, Needs
from zapflow.platform.service import Service
from zapflow.recorder.settings import RecorderSettings
from zapflow.recorder.writer import RECORDED_STREAMS, Recorder, WriteBatcher
from zapflow.store.repository import ConversationStore


@asynccontextmanager
async def build(settings: RecorderSettings, connections: Connections) -> AsyncIterator[Recorder]:
    store = ConversationStore(connections.database)
    recorder = Recorder(WriteBatcher(store, settings.batch_max_events, settings.batch_linger_ms / 1000))
    await recorder.start(connections)
    yield recorder


RECORDER = Service[RecorderSettings, Recorder](
    name="recorder",
    summary="Keeps the relational store current from the bus (health and metrics only).",
    # Tenants are not needed: every event names its own tenant.
    needs=Needs(streams=RECORDED_STREAMS, tenants=False, redis=False, database=True),
    build=build,
)
