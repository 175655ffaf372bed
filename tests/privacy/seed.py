"""A tenant's data in every store, written as the services leave it: what a tenant erasure must remove."""

from __future__ import annotations

from typing import cast

import numpy as np
from nats.js import JetStreamContext
from redis.asyncio import Redis
from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.analytics.handoffs import AGENT, add_handoff
from tests.store.conversations import ALICE, BOB, exchange
from tests.store.events import T0, stamp
from tests.support.knowledge import SHIPPING, document
from zapflow.handoff.accounts import Accounts, Principal
from zapflow.knowledge.service import Knowledge
from zapflow.knowledge.store import KnowledgeStore
from zapflow.platform import catalogue
from zapflow.platform.keys import (
    DUE,
    ContactKeys,
    due_member,
    rate_key,
    reached_key,
    tenant_due_key,
    tenant_keys_pattern,
)
from zapflow.store.campaigns import CampaignStore, NewCampaign, NewRecipient
from zapflow.store.lifecycle import TENANT_TABLES
from zapflow.store.repository import ConversationStore
from zapflow.v1 import turn_pb2

# A tenant named after the kind of send-result events: filters that put a tenant at the wrong token
# would take every tenant's results with it.
NAMED_LIKE_A_KIND = catalogue.SENT


async def seed_sql(engine: AsyncEngine, redis: Redis, tenant: str) -> None:
    """A conversation of each contact (one to be closed, one open), a handoff, a campaign, an opt-out, an agent."""
    store = ConversationStore(engine)
    await exchange(store, f"{tenant}-a", 0, tenant=tenant, contact=ALICE)
    await exchange(store, f"{tenant}-b", 7200, tenant=tenant, contact=BOB)
    await add_handoff(engine, ALICE, tenant=tenant, requested=0, assigned=5, first_reply=9, resolved=60, note="VIP")
    campaigns = CampaignStore(engine)
    spring = NewCampaign(tenant, "spring sale", "spring_promo", "en", "marketing", T0, "cli")
    await campaigns.create(spring, [NewRecipient(ALICE, {"body.1": "Ana"})], T0)
    await campaigns.opt_out(tenant, BOB, "admin", T0)
    accounts = Accounts(engine, redis)
    await accounts.add(tenant, AGENT, "Ana", "a long enough password")
    await accounts.issue_token(tenant, AGENT, "ci")
    await accounts.open_session(Principal(tenant, AGENT, "Ana"))  # a Redis key of the agent scope


async def seed_knowledge(knowledge: Knowledge, engine: AsyncEngine, tenant: str) -> None:
    """A document and an embedded turn, through a replica (SQL and its memory), and a stored vector."""
    await knowledge.commit(tenant, document("faq.md", [SHIPPING]))
    turn = turn_pb2.Turn(
        tenant=tenant,
        turn_id=f"{tenant}-turn",
        contact=ALICE,
        customer_text="my blender jar arrived cracked",
        answer_text="sorry to hear that",
        started_at=stamp(0),
    )
    await knowledge.embed_turn(turn)
    vector = np.ones((1, 4), dtype=np.float32)
    await KnowledgeStore(engine).save_vectors(tenant, "test-model", ["0" * 64], vector)


async def seed_redis(redis: Redis, tenant: str) -> None:
    keys = ContactKeys(tenant, ALICE)
    await redis.hset(keys.conversation, mapping={"cursor": 1})
    await redis.rpush(keys.history, '{"text": "my blender"}')
    await redis.set(rate_key(tenant, "1234"), 1)
    await redis.zadd(reached_key(tenant), {ALICE: 1})
    await redis.zadd(tenant_due_key(tenant), {keys.due_member: 1})
    await redis.zadd(DUE, {due_member(tenant, ALICE): 1})


def stream_subjects(tenant: str) -> dict[str, list[str]]:
    """A subject of each kind the tenant's messages are on, by stream (no consumer of the tests reads them)."""
    inbound = catalogue.inbound_subject(tenant, ALICE)
    result = catalogue.result_subject(tenant, ALICE)
    return {
        catalogue.INBOUND.name: [inbound],
        catalogue.STATUS.name: [catalogue.status_subject(tenant, ALICE)],
        catalogue.OUTBOUND.name: [catalogue.outbound_subject(tenant, ALICE)],
        catalogue.EVENTS.name: [result],
        catalogue.DEAD_LETTER.name: [
            catalogue.dead_letter_subject(catalogue.RECORDER_SERVICE, inbound),
            catalogue.dead_letter_subject(catalogue.GATEWAY_SERVICE, result),
            catalogue.webhook_dead_letter_subject(tenant, None),
        ],
        catalogue.TIMER_STREAM.name: [
            catalogue.timer_subject("reengage", tenant, ALICE),
            catalogue.due_subject("reengage", tenant, ALICE),
        ],
    }


async def seed_streams(js: JetStreamContext, tenant: str) -> None:
    for subjects in stream_subjects(tenant).values():
        for subject in subjects:
            await js.publish(subject, f"words of a customer of {tenant}".encode())


async def stream_counts(js: JetStreamContext, tenant: str) -> dict[str, int]:
    """The tenant's messages in each stream, found by the catalogue's filters."""
    counts: dict[str, int] = {}
    for stream, filters in catalogue.tenant_subjects(tenant).items():
        counts[stream] = 0
        for subject in filters:
            info = await js.stream_info(stream, subjects_filter=subject)
            counts[stream] += sum((info.state.subjects or {}).values())
    return counts


async def redis_keys(redis: Redis, tenant: str) -> list[str]:
    return sorted([key async for key in redis.scan_iter(match=tenant_keys_pattern(tenant))])


async def due_members(redis: Redis) -> list[str]:
    return sorted(str(member) for member in await redis.zrange(DUE, 0, -1))


async def row_counts(engine: AsyncEngine, tenant: str) -> dict[str, int]:
    """The tenant's rows in each table with a tenant column."""
    counts: dict[str, int] = {}
    async with engine.connect() as conn:
        for table in (cast(Table, model.__table__) for model in TENANT_TABLES):
            query = select(func.count()).select_from(table).where(table.c.tenant == tenant)
            counts[table.name] = int(await conn.scalar(query) or 0)
    return counts
