"""Agents' accounts: passwords (Argon2id through pwdlib), API tokens and inbox sessions.

An agent belongs to one tenant and sees only that tenant's conversations. Passwords are kept as
pwdlib's Argon2id hashes, tokens as their SHA-256 (a token is a random 256-bit secret, so a fast
hash is enough), sessions in Redis with a sliding expiry and a CSRF token of their own.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from pwdlib import PasswordHash
from redis.asyncio import Redis
from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from zapflow.platform import keys
from zapflow.store.models import EMAIL_LENGTH, Agent, AgentToken

EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD_CHARS = 10
TOKEN_PREFIX = "zfa_"  # noqa: S105 - the prefix that marks a zapflow agent token, not a secret
_passwords = PasswordHash.recommended()
# Verified when the email is unknown, so that a wrong email takes as long as a wrong password.
_DUMMY_HASH = _passwords.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """A request about an account that cannot be done; the message says why."""


@dataclass(frozen=True)
class Principal:
    """Who is asking: an agent of one tenant, through the inbox (with a session) or a token."""

    tenant: str
    email: str
    name: str
    # The session's CSRF token; None for bearer tokens (no cookie, nothing to forge).
    csrf: str | None = None
    session_id: str | None = None


@dataclass(frozen=True)
class AgentInfo:
    email: str
    name: str
    created_at: datetime


def normalise_email(email: str) -> str:
    email = email.strip().lower()
    if len(email) > EMAIL_LENGTH or not EMAIL_PATTERN.match(email):
        raise AccountError(f"not an email address: {email!r}")
    return email


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise AccountError(f"the password must have at least {MIN_PASSWORD_CHARS} characters")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Accounts:
    def __init__(self, engine: AsyncEngine, redis: Redis | None = None, session_idle_s: int = 8 * 3600) -> None:
        self._engine = engine
        self._redis = redis
        self._session_idle_s = session_idle_s

    # --- agents ---

    async def add(self, tenant: str, email: str, name: str, password: str) -> AgentInfo:
        email = normalise_email(email)
        check_password(password)
        now = datetime.now(UTC)
        shown = name.strip() or email
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    insert(Agent).values(
                        tenant=tenant, email=email, name=shown, created_at=now, password_hash=_passwords.hash(password)
                    )
                )
        except IntegrityError:
            raise AccountError(f"{email} is already an agent of {tenant}") from None
        return AgentInfo(email, shown, now)

    async def list(self, tenant: str) -> list[AgentInfo]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(Agent.email, Agent.name, Agent.created_at).where(Agent.tenant == tenant).order_by(Agent.email)
            )
            return [AgentInfo(row.email, row.name, row.created_at) for row in rows]

    async def names(self, tenant: str) -> dict[str, str]:
        return {agent.email: agent.name for agent in await self.list(tenant)}

    async def remove(self, tenant: str, email: str) -> None:
        """Remove the agent, their tokens and their sessions; their conversations stay where they are."""
        email = normalise_email(email)
        async with self._engine.begin() as conn:
            await conn.execute(delete(AgentToken).where(AgentToken.tenant == tenant, AgentToken.email == email))
            removed = await conn.execute(delete(Agent).where(Agent.tenant == tenant, Agent.email == email))
        if not removed.rowcount:
            raise AccountError(f"{email} is not an agent of {tenant}")
        if self._redis is not None:
            await self._end_sessions_of(tenant, email)

    async def exists(self, tenant: str, email: str) -> bool:
        async with self._engine.connect() as conn:
            found = await conn.scalar(
                select(func.count()).select_from(Agent).where(Agent.tenant == tenant, Agent.email == email)
            )
            return bool(found)

    # --- passwords and sessions ---

    async def verify(self, tenant: str, email: str, password: str) -> Principal | None:
        """The agent, when the password is theirs; None otherwise (whichever part was wrong)."""
        try:
            email = normalise_email(email)
        except AccountError:
            return None
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(Agent.name, Agent.password_hash).where(Agent.tenant == tenant, Agent.email == email)
                )
            ).first()
        if row is None:
            _passwords.verify(password, _DUMMY_HASH)
            return None
        if not _passwords.verify(password, row.password_hash):
            return None
        return Principal(tenant, email, row.name)

    async def open_session(self, agent: Principal) -> Principal:
        session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        key = keys.session_key(agent.tenant, session_id)
        redis = self._sessions()
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"email": agent.email, "name": agent.name, "csrf": csrf})
            pipe.expire(key, self._session_idle_s)
            await pipe.execute()
        return Principal(agent.tenant, agent.email, agent.name, csrf, session_id)

    async def session(self, tenant: str, session_id: str) -> Principal | None:
        """The session's agent, sliding its expiry; None when it expired or never was."""
        key = keys.session_key(tenant, session_id)
        redis = self._sessions()
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(key)
            pipe.expire(key, self._session_idle_s)  # a missing key stays missing (XX is Redis 7+)
            fields, _ = await pipe.execute()
        if not fields or "email" not in fields:
            return None
        return Principal(tenant, str(fields["email"]), str(fields["name"]), str(fields["csrf"]), session_id)

    async def close_session(self, tenant: str, session_id: str) -> None:
        await self._sessions().delete(keys.session_key(tenant, session_id))

    async def _end_sessions_of(self, tenant: str, email: str) -> None:
        redis = self._sessions()
        async for key in redis.scan_iter(match=keys.session_key(tenant, "*"), count=500):
            if await redis.hget(key, "email") == email:
                await redis.delete(key)

    def _sessions(self) -> Redis:
        if self._redis is None:
            raise RuntimeError("sessions need Redis")
        return self._redis

    # --- API tokens ---

    async def issue_token(self, tenant: str, email: str, label: str) -> str:
        """A new bearer token acting as the agent; shown once, only its hash is kept."""
        email = normalise_email(email)
        if not await self.exists(tenant, email):
            raise AccountError(f"{email} is not an agent of {tenant}")
        token = f"{TOKEN_PREFIX}{secrets.token_urlsafe(32)}"
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(AgentToken).values(
                    tenant=tenant,
                    email=email,
                    token_hash=token_hash(token),
                    label=label[:64] or "api",
                    created_at=datetime.now(UTC),
                )
            )
        return token

    async def by_token(self, token: str) -> Principal | None:
        if not token.startswith(TOKEN_PREFIX):
            return None
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(AgentToken.tenant, AgentToken.email, Agent.name)
                    .join(Agent, (Agent.tenant == AgentToken.tenant) & (Agent.email == AgentToken.email))
                    .where(AgentToken.token_hash == token_hash(token))
                )
            ).first()
        return Principal(row.tenant, row.email, row.name) if row is not None else None
