"""The Redis connection every service opens (the key schema is in `keys.py`)."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis


def connect_redis(url: str, max_connections: int = 64) -> Redis:
    """A bounded pool: a burst waits for a free connection instead of failing with "Too many connections"."""
    pool = BlockingConnectionPool.from_url(
        url,
        decode_responses=True,
        health_check_interval=10,
        socket_connect_timeout=2,
        max_connections=max_connections,
        timeout=10,
    )
    return Redis(connection_pool=pool)
