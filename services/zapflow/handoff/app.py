"""`zapflow handoff`: the handoff service, with the agents' inbox and its JSON API.

It consumes what the conversation engine hands over (requests and forwarded messages, in each
contact's order), sends the agents' notifications, relays inbox activity between replicas, and
sweeps the queue on a timer (assignment, inactivity, owner keys, gauges). Every replica does all of
it: the store's conditional updates decide who wins a race.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import httpx
from fastapi import APIRouter, FastAPI
from nats.aio.msg import Msg

from zapflow.handoff.accounts import Accounts
from zapflow.handoff.api import HandoffParts, InboxFeed, inbox_router, refused, session_router
from zapflow.handoff.desk import Desk, DeskError
from zapflow.handoff.notify import Notifier
from zapflow.handoff.settings import HandoffSettings
from zapflow.platform import catalogue
from zapflow.platform.connections import Connections, Needs
from zapflow.platform.logging import get_logger
from zapflow.platform.service import Service
from zapflow.v1 import handoff_pb2

log = get_logger(__name__)


@asynccontextmanager
async def build(settings: HandoffSettings, connections: Connections) -> AsyncIterator[HandoffParts]:
    desk = Desk(
        connections.database,
        connections.redis,
        connections.nc,
        connections.js,
        connections.registry,
        public_url=settings.public_url,
        presence_window_s=settings.presence_window_s,
        max_transcript_messages=settings.max_transcript_messages,
    )
    accounts = Accounts(connections.database, connections.redis, settings.session_idle_s)
    feed = InboxFeed()

    async def relay(msg: Msg) -> None:
        try:
            activity = json.loads(msg.data)
        except ValueError:
            log.warning("unreadable inbox activity", subject=msg.subject)
            return
        feed.publish(catalogue.tenant_of(msg.subject), activity)

    subscription = await connections.nc.subscribe(catalogue.inbox_subject(), cb=relay)
    stopping = asyncio.Event()
    sweeper = asyncio.create_task(_sweep(desk, settings.sweep_interval_s, stopping), name="handoff-sweep")
    async with httpx.AsyncClient(timeout=10.0) as http:
        notifier = Notifier(connections.registry, http, settings.core)
        try:
            await connections.consume(catalogue.HANDOFF_EVENTS, handoff_pb2.HandoffEvent, desk.on_event)
            await connections.consume(
                catalogue.HANDOFF_NOTIFY,
                handoff_pb2.AgentNotification,
                notifier.deliver,
                on_dead_letter=notifier.dead_lettered,
            )
            yield HandoffParts(desk, accounts, feed)
        finally:
            stopping.set()
            await sweeper
            with contextlib.suppress(Exception):  # shutting down: the connection may be closed already
                await subscription.unsubscribe()


async def _sweep(desk: Desk, interval_s: float, stopping: asyncio.Event) -> None:
    while not stopping.is_set():
        try:
            await desk.sweep()
        except Exception as error:  # the store or Redis away: the next sweep tries again
            log.warning("handoff sweep failed", error=type(error).__name__, detail=str(error))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=interval_s)


def routers(settings: HandoffSettings) -> Sequence[APIRouter]:
    from zapflow.handoff.inbox import pages_router

    return (session_router(settings), inbox_router(settings), pages_router(settings))


def customise(app: FastAPI, _: HandoffSettings) -> None:
    app.add_exception_handler(DeskError, refused)


HANDOFF = Service(
    name="handoff",
    summary="Conversations with a person: the queue, the agents' inbox and its API.",
    needs=Needs(streams=(catalogue.OUTBOUND, catalogue.EVENTS, catalogue.DEAD_LETTER), database=True),
    build=build,
    routers=routers,
    customise=customise,
)
