"""The CLI beside a `zapflow dev` stack: it reads the stack file and talks to that stack's servers.

Each test records a stack file of real servers (conftest.py's NATS, Redis and SQLite) in
`<tmp>/.zapflow`, as `zapflow dev` does, and runs the command in `<tmp>` with no ZAPFLOW_*
variable, so the defaults (NATS on 4222, Redis on 6379) would be the only other place to go.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from nats.js import JetStreamContext
from redis.asyncio import Redis
from sqlalchemy import func, select

from tests.store.conversations import exchange
from tests.support.cli import cli_environment, run_zapflow
from tests.support.servers import ManagedServer
from tests.support.tenants import tenant_document
from zapflow.platform import bus, catalogue
from zapflow.platform.keys import ContactKeys
from zapflow.platform.settings import CoreSettings
from zapflow.platform.stackfile import StackAddresses, record
from zapflow.store.engine import create_engine
from zapflow.store.migrate import head_revision
from zapflow.store.models import Erasure, Message
from zapflow.store.repository import ConversationStore
from zapflow.tenants.registry import TenantRegistry

TENANT = "acme"
CUSTOMER = "5511955550001"
# Nothing listens on port 1: a stack that is not running.
STOPPED_NATS = "nats://127.0.0.1:1"
STOPPED_REDIS = "redis://127.0.0.1:1/0"


def record_stack(directory: Path, core: CoreSettings, **addresses: str) -> StackAddresses:
    """Record a stack file of `core`'s servers (or of `addresses`) in `<directory>/.zapflow`."""
    recorded = {
        "nats_url": core.nats_url,
        "redis_url": core.redis_url,
        "database_url": core.database_url,
        "analytics_path": str(directory / ".zapflow" / "analytics.duckdb"),
        "admin_url": "http://127.0.0.1:8003",
    }
    stack = StackAddresses(**(recorded | addresses))
    record(directory / ".zapflow", stack)
    return stack


def erase(directory: Path, *args: str, **variables: str) -> tuple[int, str]:
    result = run_zapflow(
        cli_environment(**variables), "contact", "erase", "--tenant", TENANT, "--phone", CUSTOMER, "--yes", *args,
        cwd=directory,
    )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stderr


async def remember_the_customer(core: CoreSettings, js: JetStreamContext) -> None:
    """The customer in every store: a message on the bus, conversation state in Redis, rows in SQL."""
    await bus.ensure_streams(js, catalogue.ALL_STREAMS)
    await js.publish(catalogue.inbound_subject(TENANT, CUSTOMER), b"my words")
    redis = Redis.from_url(core.redis_url)
    try:
        await redis.hset(ContactKeys(TENANT, CUSTOMER).conversation, "cursor", "1")
    finally:
        await redis.aclose()
    engine = create_engine(core.database_url)
    try:
        await exchange(ConversationStore(engine), "first", 0, tenant=TENANT, contact=CUSTOMER)
    finally:
        await engine.dispose()


async def what_is_left(core: CoreSettings, js: JetStreamContext) -> dict[str, int]:
    """How much of the customer each store still holds, and how many erasures are recorded."""
    info = await js.stream_info(catalogue.INBOUND.name, subjects_filter=catalogue.inbound_subject(TENANT, CUSTOMER))
    redis = Redis.from_url(core.redis_url)
    engine = create_engine(core.database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.scalar(select(func.count()).where(Message.contact == CUSTOMER))
            erasures = await conn.scalar(select(func.count()).select_from(Erasure))
        return {
            "bus": sum((info.state.subjects or {}).values()),
            "redis": await redis.exists(*ContactKeys(TENANT, CUSTOMER).all()),
            "sql": int(rows or 0),
            "erasures": int(erasures or 0),
        }
    finally:
        await engine.dispose()
        await redis.aclose()


async def test_tenant_commands_beside_a_stack_use_its_nats(
    core: CoreSettings, registry: TenantRegistry, tmp_path: Path
) -> None:
    record_stack(tmp_path, core)
    document = tenant_document()
    (tmp_path / "tenant.yaml").write_text(yaml.safe_dump(document))

    applied = run_zapflow(cli_environment(), "tenant", "apply", "-f", "tenant.yaml", cwd=tmp_path)

    assert applied.returncode == 0, applied.stderr
    assert applied.stderr == f"using the zapflow dev stack in .zapflow (NATS {core.nats_url})\n"
    assert await registry.get(document["metadata"]["name"]) is not None
    listed = run_zapflow(cli_environment(), "tenant", "list", cwd=tmp_path)
    assert document["metadata"]["name"] in listed.stdout, listed.stderr


async def test_an_erasure_beside_a_stack_reaches_its_redis_nats_and_database(
    core: CoreSettings, js: JetStreamContext, tmp_path: Path
) -> None:
    stack = record_stack(tmp_path, core)
    await remember_the_customer(core, js)
    assert await what_is_left(core, js) == {"bus": 1, "redis": 1, "sql": 2, "erasures": 0}

    code, stderr = erase(tmp_path)

    assert code == 0, stderr
    assert stderr.splitlines()[0] == (
        f"using the zapflow dev stack in .zapflow (NATS {core.nats_url}, Redis {core.redis_url}, "
        f"database {core.database_url}, analytics {stack.analytics_path})"
    )
    assert await what_is_left(core, js) == {"bus": 0, "redis": 0, "sql": 0, "erasures": 1}


def test_db_and_scheduler_once_beside_a_stack_use_its_database(core: CoreSettings, tmp_path: Path) -> None:
    record_stack(tmp_path, core)

    current = run_zapflow(cli_environment(), "db", "current", cwd=tmp_path)
    assert current.returncode == 0, current.stderr
    assert f"database {core.database_url}: revision {head_revision()} (the newest)" in current.stdout

    once = run_zapflow(cli_environment(), "scheduler", "--once", cwd=tmp_path)
    assert once.returncode == 0, once.stderr + once.stdout
    assert "archive: done" in once.stdout
    assert once.stderr.startswith(f"using the zapflow dev stack in .zapflow (NATS {core.nats_url}, database ")


def test_a_flag_or_a_variable_wins_over_the_stack_file(core: CoreSettings, nats: ManagedServer, tmp_path: Path) -> None:
    record_stack(tmp_path, core, nats_url=STOPPED_NATS)

    stopped = run_zapflow(cli_environment(), "tenant", "list", cwd=tmp_path)
    assert stopped.returncode == 1
    assert stopped.stderr.splitlines()[-1] == (
        f"error: the zapflow dev stack in .zapflow seems not to be running: nothing answers at NATS {STOPPED_NATS}; "
        "start it with `zapflow dev`"
    )

    by_flag = run_zapflow(cli_environment(), "tenant", "list", "--nats-url", nats.url, cwd=tmp_path)
    by_variable = run_zapflow(cli_environment(ZAPFLOW_NATS_URL=nats.url), "tenant", "list", cwd=tmp_path)
    for result in (by_flag, by_variable):
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "no tenants"
        assert result.stderr == (
            f"not using the zapflow dev stack in .zapflow: NATS {nats.url} set by a flag or ZAPFLOW_* variable\n"
        )


def test_data_dir_finds_a_stack_from_anywhere_and_no_stack_means_no_word(core: CoreSettings, tmp_path: Path) -> None:
    record_stack(tmp_path, core)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data_dir = tmp_path / ".zapflow"

    found = run_zapflow(cli_environment(), "tenant", "list", "--data-dir", str(data_dir), cwd=elsewhere)
    assert found.returncode == 0, found.stderr
    assert found.stderr == f"using the zapflow dev stack in {data_dir} (NATS {core.nats_url})\n"

    missing = run_zapflow(cli_environment(), "tenant", "list", "--data-dir", str(elsewhere), cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.startswith(f"error: no zapflow dev stack in {elsewhere}: it holds no stack.json")

    no_stack = run_zapflow(cli_environment(ZAPFLOW_NATS_URL=core.nats_url), "tenant", "list", cwd=elsewhere)
    assert no_stack.returncode == 0, no_stack.stderr
    assert no_stack.stderr == ""


async def test_an_erasure_that_cannot_reach_redis_names_it_and_erases_nothing(
    core: CoreSettings, js: JetStreamContext, tmp_path: Path
) -> None:
    await remember_the_customer(core, js)
    variables = {
        "ZAPFLOW_NATS_URL": core.nats_url,
        "ZAPFLOW_REDIS_URL": STOPPED_REDIS,
        "ZAPFLOW_DATABASE_URL": core.database_url,
        "ZAPFLOW_ANALYTICS_PATH": str(tmp_path / "analytics.duckdb"),
    }

    code, stderr = erase(tmp_path, **variables)

    assert code == 1
    assert stderr.startswith("error: erasure incomplete: Redis: ConnectionError: ")
    assert stderr.rstrip().endswith("; nothing was erased; erase again once that is fixed")
    assert await what_is_left(core, js) == {"bus": 1, "redis": 1, "sql": 2, "erasures": 0}

    record_stack(tmp_path, core, redis_url=STOPPED_REDIS)
    code, stderr = erase(tmp_path)
    assert code == 1
    assert f"seems not to be running: nothing answers at Redis {STOPPED_REDIS}" in stderr


async def test_an_erasure_on_a_nats_without_zapflow_streams_erases_nothing(
    core: CoreSettings, js: JetStreamContext, tmp_path: Path
) -> None:
    await remember_the_customer(core, js)
    record_stack(tmp_path, core)
    for stream in catalogue.ALL_STREAMS:  # as on a NATS that is not zapflow's
        await js.delete_stream(stream.name)

    code, stderr = erase(tmp_path)

    assert code == 1
    assert "error: erasure incomplete: JetStream: no stream ZF_INBOUND, ZF_STATUS" in stderr
    assert "nothing was erased" in stderr
    redis = Redis.from_url(core.redis_url)
    try:
        assert await redis.exists(ContactKeys(TENANT, CUSTOMER).conversation) == 1
    finally:
        await redis.aclose()


async def test_an_erasure_stopped_after_the_database_says_so_and_a_retry_finishes_it(
    core: CoreSettings, js: JetStreamContext, tmp_path: Path
) -> None:
    stack = record_stack(tmp_path, core)
    await remember_the_customer(core, js)
    Path(stack.analytics_path).mkdir()  # DuckDB cannot open a directory: the last step fails

    code, stderr = erase(tmp_path)

    assert code == 1
    assert "error: erasure incomplete: the analytics file: WarehouseError: " in stderr
    assert stderr.rstrip().endswith(
        "; already erased from Redis, JetStream, the database; erase again to finish (every step is idempotent)"
    )
    assert await what_is_left(core, js) == {"bus": 0, "redis": 0, "sql": 0, "erasures": 0}

    Path(stack.analytics_path).rmdir()
    code, stderr = erase(tmp_path)
    assert code == 0, stderr
    assert await what_is_left(core, js) == {"bus": 0, "redis": 0, "sql": 0, "erasures": 1}


@pytest.mark.parametrize("broken", ["{", '{"nats_url": "nats://127.0.0.1:4222"}'], ids=["not json", "keys missing"])
def test_a_broken_stack_file_is_a_one_line_error(tmp_path: Path, broken: str) -> None:
    (tmp_path / ".zapflow").mkdir()
    (tmp_path / ".zapflow" / "stack.json").write_text(broken)

    result = run_zapflow(cli_environment(), "tenant", "list", cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and ".zapflow/stack.json" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
