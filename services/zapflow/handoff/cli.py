"""`zapflow handoff` and `zapflow agent`: the handoff service, and its queue and agents for scripts and operations.

The commands work on the stores directly (the relational store, Redis and NATS, found beside a
`zapflow dev` stack like every command's) through the service's own `Desk` and `Accounts`: a take
from here and one from the inbox are the same change, and the handoff service need not run.
`zapflow.cli` registers both apps; import it, not this module, first.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar, cast

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from zapflow.cli import (
    Address,
    DataDir,
    Host,
    Port,
    Tenant,
    _fail,
    _nats_unreachable,
    _settings,
    _target,
    _tenant_name,
    err,
    out,
)

if TYPE_CHECKING:
    from zapflow.handoff.accounts import Accounts, AgentInfo
    from zapflow.handoff.desk import Desk, State, Summary
    from zapflow.tenants.model import BotTenant

T = TypeVar("T")

# What the commands read and write: the queue in SQL, the owner keys in Redis, tenants and the
# agents' activity on NATS.
USES: tuple[Address, ...] = ("nats_url", "redis_url", "database_url")

Phone = Annotated[str, typer.Option(help="The customer's phone number, e.g. +55 11 98765-4321.", show_default=False)]
Email = Annotated[str, typer.Option(help="The agent's email address (their sign-in name).", show_default=False)]

# Annotated: mypy reads them from zapflow.cli, which this module imports in turn.
handoff_app: typer.Typer = typer.Typer(
    help="The handoff service (no command: run it), and the conversations people have taken from the bot."
)
agent_app: typer.Typer = typer.Typer(
    no_args_is_help=True, help="A tenant's agents: the people who answer customers in the inbox, and their API tokens."
)


@handoff_app.callback(invoke_without_command=True)
def handoff(context: typer.Context, host: Host = None, port: Port = None) -> None:
    """Run the handoff service: the queue, the agents' inbox and its API (health and metrics on --port)."""
    if context.invoked_subcommand is not None:
        return
    from zapflow.handoff.app import HANDOFF
    from zapflow.handoff.settings import HandoffSettings
    from zapflow.platform.service import run
    from zapflow.store.errors import StoreError

    try:
        run(HANDOFF, _settings(HandoffSettings, host=host, port=port))
    except StoreError as error:
        raise _fail(str(error)) from None


@dataclass(frozen=True)
class Handoffs:
    """What a command acts through: the tenant, and the service's desk and accounts over the stores."""

    tenant: BotTenant
    desk: Desk
    accounts: Accounts


def _with_handoffs(
    data_dir: Path | None, tenant: str, action: Callable[[Handoffs], Awaitable[T]], sends: bool = False
) -> T:
    """Run an action on the stores for one tenant of the registry; a refusal or an unreachable store is a message.

    `sends`: the action may publish messages and notifications, so zapflow's streams must exist.
    """
    from nats.errors import NoServersError
    from redis.exceptions import RedisError
    from sqlalchemy.exc import SQLAlchemyError

    from zapflow.handoff.accounts import AccountError, Accounts
    from zapflow.handoff.desk import Desk, DeskError
    from zapflow.platform import bus, catalogue
    from zapflow.platform.connections import Needs, connected
    from zapflow.store.engine import redacted
    from zapflow.store.errors import StoreError

    _tenant_name(tenant)
    core = _target(data_dir, USES).core

    async def main() -> T:
        async with connected("cli", core, Needs(database=True), short_lived=True) as connections:
            if sends:
                await bus.require_streams(connections.js, (catalogue.OUTBOUND, catalogue.EVENTS))
            # The desk reads tenants from the registry's live view, as in the service.
            await connections.registry.watch()
            found = connections.registry.by_name(tenant)
            if found is None:
                raise _fail(f"no tenant named {tenant} in the registry (`zapflow tenant list` shows them)")
            desk = Desk(connections.database, connections.redis, connections.nc, connections.js, connections.registry)
            accounts = Accounts(connections.database, connections.redis)
            try:
                return await action(Handoffs(found, desk, accounts))
            except (DeskError, AccountError) as error:
                raise _fail(escape(str(error))) from None
            except bus.RetryLater as error:  # another change to the same handoff won a race
                raise _fail(escape(f"{error}; try again")) from None

    try:
        return asyncio.run(main())
    except (StoreError, bus.StreamsMissing) as error:
        raise _fail(escape(str(error))) from None
    except RedisError as error:
        raise _fail(escape(f"cannot reach Redis at {redacted(core.redis_url)}: {error}")) from None
    except SQLAlchemyError as error:
        raise _fail(escape(f"the database {redacted(core.database_url)} failed: {type(error).__name__}")) from None
    except (NoServersError, OSError, TimeoutError) as error:
        raise _nats_unreachable(core.nats_url, error) from None


def _contact(phone: str) -> str:
    """The WhatsApp id of a phone number as typed; a message when it is not one."""
    from zapflow.privacy.erasure import ErasureError, normalise_phone

    try:
        return normalise_phone(phone)
    except ErasureError as error:
        raise _fail(f"--phone: {escape(str(error))}") from None


def _email(email: str) -> str:
    from zapflow.handoff.accounts import AccountError, normalise_email

    try:
        return normalise_email(email)
    except AccountError as error:
        raise _fail(f"--email: {escape(str(error))}") from None


async def _an_agent(handoffs: Handoffs, email: str) -> str:
    if not await handoffs.accounts.exists(handoffs.tenant.name, email):
        raise _fail(
            f"{escape(email)} is not an agent of {handoffs.tenant.name} "
            f"(`zapflow agent list --tenant {handoffs.tenant.name}` shows them)"
        )
    return email


def _customer(summary: Summary) -> Text:
    """The customer as the queue shows them: a masked number and the name they gave WhatsApp (text, never markup)."""
    from zapflow.handoff.desk import mask_phone
    from zapflow.platform.deadletters import printable

    shown = Text(mask_phone(summary.contact))
    if summary.customer_name:
        shown.append(f" {printable(summary.customer_name)}")
    return shown


def _held_by(summary: Summary) -> str:
    return f"assigned to {summary.agent}" if summary.agent else f"waiting in {summary.tenant}'s queue for an agent"


# --- zapflow handoff list | take | resolve ---


@handoff_app.command("list")
def handoff_list(
    tenant: Tenant,
    state: Annotated[
        str | None,
        typer.Option(help="Only conversations in this state: waiting, assigned or resolved (default: the open ones)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many, the most urgent first.")] = 200,
    data_dir: DataDir = None,
) -> None:
    """List the conversations people have: the open ones, highest priority and longest waiting first."""
    from zapflow.analytics.report import duration
    from zapflow.store.models import HANDOFF_STATES

    if state is not None and state not in HANDOFF_STATES:
        raise _fail(f"--state: {escape(repr(state))} is not one of {', '.join(HANDOFF_STATES)}")

    async def listing(handoffs: Handoffs) -> tuple[list[Summary], dict[str, float]]:
        desk = handoffs.desk
        found = await desk.conversations(handoffs.tenant.name, cast("State | None", state), limit=limit)
        return found, await desk.figures(handoffs.tenant.name)

    found, figures = _with_handoffs(data_dir, tenant, listing)
    now = datetime.now(UTC)
    if found:
        table = Table("id", "customer", "state", "reason", "priority", "agent", "waited", "window")
        for summary in found:
            # How long the customer waited for a person: until one took it, else until now (or the end).
            until = summary.assigned_at or summary.resolved_at or now
            window = (
                f"open, {duration((summary.window_closes_at - now).total_seconds())} left"
                if summary.window_closes_at is not None and summary.window_open(now)
                else "closed"
            )
            table.add_row(
                str(summary.id),
                _customer(summary),
                summary.status,
                summary.reason,
                str(summary.priority),
                summary.agent or "-",
                duration((until - summary.requested_at).total_seconds()),
                window,
            )
        out.print(table)
    else:
        out.print(f"no {state or 'open'} conversations with a person in tenant {tenant}")
    oldest = f" (the oldest for {duration(figures['oldest_wait_s'])})" if figures["waiting"] else ""
    online = int(figures["agents_online"])
    out.print(f"waiting: {int(figures['waiting'])}{oldest}; agents online: {online}")


@handoff_app.command("take")
def handoff_take(
    tenant: Tenant,
    phone: Phone,
    agent: Annotated[
        str | None,
        typer.Option(
            help="The agent who takes it (an email of `zapflow agent list`); it counts towards their cap of open "
            "conversations. Without it the conversation goes to the tenant's queue: the customer gets the "
            "handoff notice and the next agent to claim it (or the automatic assignment) has it.",
            show_default=False,
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Take a customer's conversation from the bot: from now on the bot sends them nothing until it is resolved."""
    contact = _contact(phone)
    email = None if agent is None else _email(agent)

    async def take(handoffs: Handoffs) -> tuple[Summary | None, Summary]:
        desk, name = handoffs.desk, handoffs.tenant.name
        before = await desk.current(name, contact)
        if email is not None:
            await _an_agent(handoffs, email)
        return before, await desk.take(name, contact, email)  # a waiting one is claimed by the agent

    before, summary = _with_handoffs(data_dir, tenant, take, sends=True)
    customer = _customer(summary)
    if before is not None and (before.status, before.agent) == (summary.status, summary.agent):
        out.print(Text.assemble(f"conversation {summary.id} with ", customer, f" is already {_held_by(summary)}"))
        return
    how = "taken from the bot" if before is None else "claimed from the queue"
    out.print(Text.assemble(f"conversation {summary.id} with ", customer, f" {how}: {_held_by(summary)}"))
    out.print(
        "the bot sends this customer nothing until it is resolved "
        f"(`zapflow handoff resolve --tenant {tenant} --phone {escape(phone)}`, or in the inbox)",
        soft_wrap=True,
    )


@handoff_app.command("resolve")
def handoff_resolve(
    tenant: Tenant,
    phone: Phone,
    message: Annotated[
        str | None,
        typer.Option(
            help="A closing message for the customer (default: the tenant's closingMessage, if any); only inside "
            "their 24-hour window."
        ),
    ] = None,
    agent: Annotated[
        str | None,
        typer.Option(
            help="Resolve as this agent (it must be theirs or waiting); default: as the operator, whoever has it.",
            show_default=False,
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Hand a customer's conversation back to the bot, with a closing message when their window is open."""
    from zapflow.handoff.desk import SYSTEM

    contact = _contact(phone)
    email = None if agent is None else _email(agent)

    async def resolve(handoffs: Handoffs) -> tuple[Summary, str | None]:
        desk, name = handoffs.desk, handoffs.tenant.name
        # Without an agent, the operator: the desk lets them hand back whoever's conversation.
        actor = SYSTEM if email is None else await _an_agent(handoffs, email)
        current = await desk.current(name, contact)
        if current is None:
            raise _fail(f"{escape(phone)} has no open handoff in tenant {name}: the bot has the conversation")
        closing = (message or "").strip() or handoffs.tenant.spec.handoff.closing_message
        # The desk sends a closing message only inside the window (and refuses one asked for outside it).
        sent = closing if closing and current.window_open(datetime.now(UTC)) else None
        return await desk.resolve(name, current.id, actor, message), sent

    summary, closing = _with_handoffs(data_dir, tenant, resolve, sends=True)
    after = f"resolved by {summary.resolved_by}: the bot answers "
    out.print(Text.assemble(f"conversation {summary.id} ", after, _customer(summary), " again"))
    if closing is not None:
        out.print(Text.assemble("closing message on its way: ", Text(closing)))


# --- zapflow agent add | list | remove | token ---


@agent_app.command("add")
def agent_add(
    tenant: Tenant,
    email: Email,
    name: Annotated[str, typer.Option(help="The name colleagues see (default: the email).")] = "",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin (for scripts).")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Create an agent's account: they sign in to the inbox with the tenant, this email and the password asked for."""
    from zapflow.handoff.accounts import MIN_PASSWORD_CHARS, AccountError, check_password

    address = _email(email)
    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else None

    async def vacant(handoffs: Handoffs) -> None:
        if await handoffs.accounts.exists(handoffs.tenant.name, address):
            raise _fail(f"{escape(address)} is already an agent of {tenant}")

    if password is None:  # asked once nothing else can fail, and with no connection open meanwhile
        _with_handoffs(data_dir, tenant, vacant)
        password = typer.prompt(
            f"Password (at least {MIN_PASSWORD_CHARS} characters)", hide_input=True, confirmation_prompt=True
        )
    try:
        check_password(password)
    except AccountError as error:
        raise _fail(escape(str(error))) from None
    chosen = password

    async def add(handoffs: Handoffs) -> None:
        await handoffs.accounts.add(handoffs.tenant.name, address, name, chosen)

    _with_handoffs(data_dir, tenant, add)
    out.print(f"agent {escape(address)} added to tenant {tenant}: they sign in to the inbox (/inbox/ of the service)")


@agent_app.command("list")
def agent_list(tenant: Tenant, data_dir: DataDir = None) -> None:
    """List a tenant's agents, who is online and how many conversations each holds."""
    from zapflow.platform.deadletters import printable

    async def listing(handoffs: Handoffs) -> tuple[list[AgentInfo], set[str], dict[str, int]]:
        name = handoffs.tenant.name
        agents = await handoffs.accounts.list(name)
        online = set(await handoffs.desk.online_agents(name))
        holding: dict[str, int] = {}
        for summary in await handoffs.desk.conversations(name, "assigned", limit=100_000):
            if summary.agent:
                holding[summary.agent] = holding.get(summary.agent, 0) + 1
        return agents, online, holding

    agents, online, holding = _with_handoffs(data_dir, tenant, listing)
    if not agents:
        out.print(f"no agents in tenant {tenant} (`zapflow agent add --tenant {tenant} --email E` adds one)")
        return
    table = Table("email", "name", "online", "open conversations", "added (UTC)")
    for agent in agents:
        table.add_row(
            Text(agent.email),
            Text(printable(agent.name)),
            "yes" if agent.email in online else "no",
            str(holding.get(agent.email, 0)),
            f"{agent.created_at:%Y-%m-%d %H:%M}",
        )
    out.print(table)


@agent_app.command("remove")
def agent_remove(tenant: Tenant, email: Email, data_dir: DataDir = None) -> None:
    """Remove an agent, their API tokens and their inbox sessions; their open conversations stay theirs."""
    address = _email(email)

    async def remove(handoffs: Handoffs) -> int:
        name = handoffs.tenant.name
        await handoffs.accounts.remove(name, address)
        return len(await handoffs.desk.conversations(name, "assigned", agent=address, limit=100_000))

    held = _with_handoffs(data_dir, tenant, remove)
    out.print(f"agent {escape(address)} removed from tenant {tenant}; their tokens and sessions no longer work")
    if held:
        plural, them = ("s", "them") if held > 1 else ("", "it")
        out.print(
            f"{held} open conversation{plural} still assigned to them: another agent transfers {them} in the inbox, "
            f"or `zapflow handoff resolve --tenant {tenant} --phone P` hands {them} back to the bot",
            soft_wrap=True,
        )


@agent_app.command("token")
def agent_token(
    tenant: Tenant,
    email: Email,
    label: Annotated[str, typer.Option(help="What the token is for (kept with it, at most 64 characters).")] = "api",
    data_dir: DataDir = None,
) -> None:
    """Create a bearer token of the inbox's JSON API acting as this agent; it is printed once, on stdout alone."""
    address = _email(email)

    async def issue(handoffs: Handoffs) -> str:
        return await handoffs.accounts.issue_token(handoffs.tenant.name, address, label)

    token = _with_handoffs(data_dir, tenant, issue)
    err.print(
        f"[yellow]This token is shown only now[/]: keep it as a secret. It acts as {escape(address)} of tenant "
        f"{tenant} on /api/v1/ (Authorization: Bearer <token>) until the agent is removed.",
        soft_wrap=True,
    )
    print(token)
