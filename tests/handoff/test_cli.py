"""`zapflow agent add|list|token|remove` and `zapflow handoff take|list|resolve` as a person runs them: the real
command in a process of its own, against the test's NATS, Redis and migrated SQLite (no service runs)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.cli import cli_environment, declare_streams
from tests.support.handoff import AGENT_PASSWORD, handoffs_of
from tests.support.tenants import make_tenant
from zapflow.handoff.accounts import Accounts
from zapflow.platform import catalogue, keys
from zapflow.platform.servers import zapflow_command
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.model import BotTenant
from zapflow.tenants.registry import TenantRegistry

# A dozen `zapflow` processes per test, each paying Python's start-up: on a loaded machine
# (two test workers on two cores) that alone nears the default 120 s.
pytestmark = pytest.mark.timeout(300)

PHONE = "+55 11 98765-4321"
CONTACT = "5511987654321"
NOTICE = "Um atendente já vai falar com você."


class Zapflow:
    """Runs `zapflow ...` off the event loop with the test's servers in its environment, from a folder with no stack."""

    def __init__(self, core: CoreSettings, cwd: Path) -> None:
        self._env = cli_environment(
            ZAPFLOW_NATS_URL=core.nats_url, ZAPFLOW_REDIS_URL=core.redis_url, ZAPFLOW_DATABASE_URL=core.database_url
        )
        self._cwd = cwd

    async def __call__(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        result = await asyncio.to_thread(
            subprocess.run,
            zapflow_command(*args),
            env=self._env,
            cwd=self._cwd,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            # No controlling terminal: a hidden prompt reads stdin, as it does in a pipe.
            start_new_session=True,
        )
        assert "Traceback" not in result.stderr, result.stderr
        return result


@pytest.fixture
def zapflow(core: CoreSettings, tmp_path: Path) -> Zapflow:
    return Zapflow(core, tmp_path)


@pytest.fixture
async def tenant(registry: TenantRegistry) -> BotTenant:
    tenant = make_tenant(spec={"handoff": {"notice": NOTICE}})
    await registry.put(tenant)
    return tenant


@pytest.fixture
async def owner_keys(core: CoreSettings) -> AsyncIterator[Redis]:
    client = Redis.from_url(core.redis_url, decode_responses=True)
    yield client
    await client.aclose()


def failed(result: subprocess.CompletedProcess[str]) -> str:
    """The one-line message of a command that failed as a person should see it fail."""
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def table(stdout: str) -> dict[str, list[str]]:
    """A rich table's body rows, by their first cell."""
    rows = {}
    for line in stdout.splitlines():
        if line.startswith("│"):
            cells = [cell.strip() for cell in line.strip("│").split("│")]
            rows[cells[0]] = cells[1:]
    return rows


async def test_agent_add_list_token_and_remove(zapflow: Zapflow, tenant: BotTenant, database: AsyncEngine) -> None:
    name = tenant.name
    # The password is asked twice, hidden; the email is kept in lowercase.
    added = await zapflow(
        "agent", "add", "--tenant", name, "--email", "Ana@Example.com", "--name", "Ana Lima",
        stdin=f"{AGENT_PASSWORD}\n{AGENT_PASSWORD}\n",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert f"agent ana@example.com added to tenant {name}" in added.stdout
    scripted = await zapflow(
        "agent", "add", "--tenant", name, "--email", "bruno@example.com", "--password-stdin", stdin="another password\n"
    )
    assert scripted.returncode == 0, scripted.stderr
    accounts = Accounts(database)
    assert await accounts.verify(name, "ana@example.com", AGENT_PASSWORD) is not None
    assert await accounts.verify(name, "bruno@example.com", "another password") is not None

    listed = await zapflow("agent", "list", "--tenant", name)
    assert listed.returncode == 0, listed.stderr
    rows = table(listed.stdout)
    assert rows["ana@example.com"][:3] == ["Ana Lima", "no", "0"]
    assert rows["bruno@example.com"][:3] == ["bruno@example.com", "no", "0"]

    issued = await zapflow("agent", "token", "--tenant", name, "--email", "ana@example.com", "--label", "crm")
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    assert token.startswith("zfa_") and "\n" not in token, "stdout holds the token alone, for scripts"
    assert "shown only now" in issued.stderr
    agent = await accounts.by_token(token)
    assert agent is not None and (agent.tenant, agent.email) == (name, "ana@example.com")

    twice = await zapflow(
        "agent", "add", "--tenant", name, "--email", "ana@example.com", "--password-stdin", stdin="a third password\n"
    )
    assert failed(twice) == f"error: ana@example.com is already an agent of {name}"
    removed = await zapflow("agent", "remove", "--tenant", name, "--email", "ana@example.com")
    assert removed.returncode == 0, removed.stderr
    assert "agent ana@example.com removed" in removed.stdout
    assert await accounts.by_token(token) is None, "the agent's tokens go with them"
    assert [agent.email for agent in await accounts.list(name)] == ["bruno@example.com"]
    gone = failed(await zapflow("agent", "token", "--tenant", name, "--email", "ana@example.com"))
    assert gone == f"error: ana@example.com is not an agent of {name}"


async def test_take_list_and_resolve_move_the_owner_key(
    zapflow: Zapflow,
    tenant: BotTenant,
    core: CoreSettings,
    database: AsyncEngine,
    owner_keys: Redis,
    js: JetStreamContext,
) -> None:
    name = tenant.name
    await declare_streams(core.nats_url)
    await Accounts(database).add(name, "ana@example.com", "Ana", AGENT_PASSWORD)
    owner = keys.ContactKeys(name, CONTACT).owner

    taken = await zapflow("handoff", "take", "--tenant", name, "--phone", PHONE, "--agent", "ana@example.com")
    assert taken.returncode == 0, taken.stderr
    assert "taken from the bot: assigned to ana@example.com" in taken.stdout
    assert "+55…4321" in taken.stdout and CONTACT not in taken.stdout
    [handoff] = await handoffs_of(database, name, CONTACT)
    assert (handoff.status, handoff.agent, handoff.reason) == ("assigned", "ana@example.com", "agent_took")
    assert await owner_keys.get(owner) == handoff.request_id, "the bot stays silent from now on"

    again = await zapflow("handoff", "take", "--tenant", name, "--phone", PHONE, "--agent", "ana@example.com")
    assert again.returncode == 0, again.stderr
    assert "is already assigned to ana@example.com" in again.stdout

    listed = await zapflow("handoff", "list", "--tenant", name)
    assert listed.returncode == 0, listed.stderr
    row = table(listed.stdout)[str(handoff.id)]
    assert row[:5] == ["+55…4321", "assigned", "agent_took", "0", "ana@example.com"]
    assert row[6] == "closed", "the customer never wrote: no free text can reach them"
    assert "waiting: 0; agents online: 0" in listed.stdout

    # Their window is closed: a closing message cannot be delivered, and the desk says so.
    refused = failed(await zapflow("handoff", "resolve", "--tenant", name, "--phone", PHONE, "--message", "Bye!"))
    assert "24-hour window is closed" in refused
    resolved = await zapflow("handoff", "resolve", "--tenant", name, "--phone", PHONE)
    assert resolved.returncode == 0, resolved.stderr
    assert f"conversation {handoff.id} resolved by system: the bot answers +55…4321 again" in resolved.stdout
    [handoff] = await handoffs_of(database, name, CONTACT)
    assert (handoff.status, handoff.resolved_by) == ("resolved", "system")
    assert await owner_keys.get(owner) is None, "the bot answers again"

    none_open = failed(await zapflow("handoff", "resolve", "--tenant", name, "--phone", PHONE))
    assert none_open == f"error: {PHONE} has no open handoff in tenant {name}: the bot has the conversation"

    # Without an agent the conversation goes to the queue; the customer, who never wrote, cannot be told.
    queued = await zapflow("handoff", "take", "--tenant", name, "--phone", PHONE)
    assert queued.returncode == 0, queued.stderr
    assert f"waiting in {name}'s queue for an agent" in queued.stdout
    latest = (await handoffs_of(database, name, CONTACT))[-1]
    assert (latest.status, latest.agent) == ("waiting", None)
    assert await owner_keys.get(owner) == latest.request_id
    with pytest.raises(NotFoundError):  # free text outside the 24-hour window never arrives: none is sent
        await js.get_last_msg(catalogue.OUTBOUND.name, catalogue.outbound_subject(name, CONTACT))
    waiting = await zapflow("handoff", "list", "--tenant", name, "--state", "waiting")
    assert list(table(waiting.stdout)) == [str(latest.id)], "the resolved one is not waiting"
    assert "waiting: 1 (the oldest for" in waiting.stdout


async def test_bad_input_is_a_one_line_message(zapflow: Zapflow, tenant: BotTenant, core: CoreSettings) -> None:
    name = tenant.name
    await declare_streams(core.nats_url)
    for args, message in (
        (("agent", "list", "--tenant", "nope"), "error: no tenant named nope in the registry"),
        (("agent", "list", "--tenant", "Not_A_Name"), "error: --tenant: 'Not_A_Name' is not a tenant name"),
        (("agent", "token", "--tenant", name, "--email", "ana"), "error: --email: not an email address: 'ana'"),
        (("handoff", "take", "--tenant", name, "--phone", "12"), "error: --phone: not a phone number"),
        (
            ("handoff", "take", "--tenant", name, "--phone", PHONE, "--agent", "nobody@example.com"),
            f"error: nobody@example.com is not an agent of {name}",
        ),
        (("handoff", "list", "--tenant", name, "--state", "open"), "error: --state: 'open' is not one of waiting"),
    ):
        assert failed(await zapflow(*args)).startswith(message), args
    short = await zapflow(
        "agent", "add", "--tenant", name, "--email", "ana@example.com", "--password-stdin", stdin="x\n"
    )
    assert failed(short) == "error: the password must have at least 10 characters"
