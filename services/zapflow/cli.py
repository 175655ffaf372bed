"""The `zapflow` command: one subcommand per service, tenant management and `zapflow dev`."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from zapflow.gateway.settings import GatewayRole
from zapflow.platform.logging import configure_logging
from zapflow.platform.settings import CoreSettings
from zapflow.platform.stackfile import (
    DEFAULT_DATA_DIR,
    STACK_FILE,
    StackAddresses,
    StackFileError,
    answers,
    discover,
    settings_beside,
)

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from zapflow.analytics.report import CampaignRow, Period
    from zapflow.knowledge.client import KnowledgeError
    from zapflow.knowledge.messages import Hit
    from zapflow.privacy.erasure import ErasureRecord

app = typer.Typer(no_args_is_help=True, help="zapflow: WhatsApp bots at scale.", pretty_exceptions_enable=False)


@app.callback()
def quiet_libraries() -> None:
    # A one-shot command reports on the console; the info lines of the code it calls would only
    # interleave with that on stdout. A service configures its own logs when it starts.
    configure_logging("cli", "WARNING", json=False)


tenant_app = typer.Typer(no_args_is_help=True, help="Manage tenants (BotTenant documents) in the registry.")
app.add_typer(tenant_app, name="tenant")
db_app = typer.Typer(no_args_is_help=True, help="Manage the database schema (conversations, messages, turns).")
app.add_typer(db_app, name="db")
# Annotated: mypy reads it from zapflow.scheduler.cli, which this module imports in turn.
contact_app: typer.Typer = typer.Typer(
    no_args_is_help=True,
    help="A tenant's customers: erase one everywhere (LGPD / GDPR); opt one out of campaigns, or back in.",
)
app.add_typer(contact_app, name="contact")

out = Console()
err = Console(stderr=True)
T = TypeVar("T")

Host = Annotated[str | None, typer.Option(help="Address to listen on.")]
Port = Annotated[int | None, typer.Option(help="Port to listen on.")]
NatsUrl = Annotated[str | None, typer.Option("--nats-url", help="NATS server URL (ZAPFLOW_NATS_URL).")]
DatabaseUrl = Annotated[str | None, typer.Option("--database-url", help="Database URL (ZAPFLOW_DATABASE_URL).")]
DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="The data directory of the `zapflow dev` stack to talk to (default: .zapflow, when it holds one). "
        "A flag or ZAPFLOW_* variable wins over the stack's addresses.",
        show_default=False,
    ),
]
# The settings a `zapflow dev` stack records, as messages name them.
Address = Literal["nats_url", "redis_url", "database_url", "analytics_path"]
ADDRESS_NAMES: dict[Address, str] = {
    "nats_url": "NATS",
    "redis_url": "Redis",
    "database_url": "database",
    "analytics_path": "analytics",
}
# The stack's servers: a stopped stack stops answering there (its files stay).
SERVERS: tuple[Address, ...] = ("nats_url", "redis_url")


def _fail(message: str) -> typer.Exit:
    # soft_wrap: one line whatever the terminal width, so a piped error stays greppable.
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(code=1)


def _nats_unreachable(url: str, error: BaseException) -> typer.Exit:
    return _fail(f"cannot reach NATS at {url}: {error or type(error).__name__}")


def _settings(factory: Callable[..., T], **overrides: Any) -> T:
    """Build a settings object from the environment plus the options given on the command line."""
    try:
        return factory(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise _fail(f"invalid settings: {problems}") from None


@dataclass(frozen=True)
class Target:
    """The settings a command runs with, and the `zapflow dev` stack they were read beside (None: none)."""

    core: CoreSettings
    stack: StackAddresses | None
    data_dir: Path

    def from_stack(self, address: Address) -> bool:
        if self.stack is None:
            return False
        value = getattr(self.core, address)
        recorded = self.stack.settings()[address]
        return bool(value == (Path(recorded) if isinstance(value, Path) else recorded))

    def given(self, address: Address) -> bool:
        """Set by a flag or a ZAPFLOW_* variable, rather than by the stack or a default."""
        return address in self.core.model_fields_set and not self.from_stack(address)

    def shown(self, address: Address) -> str:
        from zapflow.store.engine import redacted

        value = str(getattr(self.core, address))
        return f"{ADDRESS_NAMES[address]} {redacted(value) if address == 'database_url' else value}"

    def describe(self, uses: tuple[Address, ...]) -> str:
        """Which stack the command talks to, in one line."""
        stack = f"the zapflow dev stack in {self.data_dir}"
        own = ", ".join(self.shown(address) for address in uses if self.from_stack(address))
        given = ", ".join(self.shown(address) for address in uses if not self.from_stack(address))
        if not own:
            return f"not using {stack}: {given} set by a flag or ZAPFLOW_* variable"
        return f"using {stack} ({own})" + (f"; {given} set by a flag or ZAPFLOW_* variable" if given else "")


def _target(data_dir: Path | None, uses: tuple[Address, ...], **overrides: Any) -> Target:
    """A command's settings: a flag or ZAPFLOW_* variable, else the `zapflow dev` stack's address, else the default.

    With a stack, says on stderr which one the command talks to (`uses`: the addresses it needs),
    and stops when that stack's servers do not answer.
    """
    where = DEFAULT_DATA_DIR if data_dir is None else data_dir
    try:
        stack = discover(where)
    except StackFileError as error:
        raise _fail(escape(str(error))) from None
    if stack is None:
        if data_dir is not None:
            raise _fail(
                escape(
                    f"no zapflow dev stack in {data_dir}: it holds no {STACK_FILE} (`zapflow dev --data-dir` writes it)"
                )
            )
        return Target(_settings(CoreSettings, **overrides), None, where)
    target = Target(_settings(settings_beside(stack), **overrides), stack, where)
    err.print(escape(target.describe(uses)), soft_wrap=True)
    silent = [
        target.shown(address)
        for address in uses
        if address in SERVERS and target.from_stack(address) and not answers(str(getattr(target.core, address)))
    ]
    if silent:
        start = "zapflow dev" if data_dir is None else f"zapflow dev --data-dir {data_dir}"
        raise _fail(
            escape(
                f"the zapflow dev stack in {where} seems not to be running: nothing answers at {', '.join(silent)}; "
                f"start it with `{start}`"
            )
        )
    return target


@app.command()
def gateway(
    host: Host = None,
    port: Port = None,
    role: Annotated[
        GatewayRole | None,
        typer.Option(
            help="webhook: Meta's webhooks in; egress: outbound commands to the Graph API; all: both "
            "(ZAPFLOW_GATEWAY_ROLE, default all).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the gateway: the WhatsApp webhook and the Graph API egress, or one of them (--role)."""
    from zapflow.gateway.app import gateway_service
    from zapflow.gateway.settings import GatewaySettings
    from zapflow.platform.service import run

    settings = _settings(GatewaySettings, host=host, port=port, role=role)
    run(gateway_service(settings.role), settings)


@app.command()
def conversation(host: Host = None, port: Port = None) -> None:
    """Run the conversation service (health and metrics on --port)."""
    from zapflow.conversation.app import CONVERSATION
    from zapflow.conversation.settings import ConversationSettings
    from zapflow.platform.service import run

    run(CONVERSATION, _settings(ConversationSettings, host=host, port=port))


@app.command()
def recorder(host: Host = None, port: Port = None) -> None:
    """Run the recorder: keeps the relational store current from the bus (health and metrics on --port)."""
    from zapflow.platform.service import run
    from zapflow.recorder.app import RECORDER
    from zapflow.recorder.settings import RecorderSettings
    from zapflow.store.errors import StoreError

    try:
        run(RECORDER, _settings(RecorderSettings, host=host, port=port))
    except StoreError as error:
        raise _fail(str(error)) from None


@app.command()
def embedding(host: Host = None, port: Port = None) -> None:
    """Run the embedding service: knowledge bases, embeddings and search over NATS (health and metrics on --port)."""
    from zapflow.knowledge.app import EMBEDDING
    from zapflow.knowledge.settings import EmbeddingSettings
    from zapflow.platform.service import run
    from zapflow.store.errors import StoreError

    try:
        run(EMBEDDING, _settings(EmbeddingSettings, host=host, port=port))
    except StoreError as error:
        raise _fail(str(error)) from None


@app.command()
def scheduler(
    host: Host = None,
    port: Port = None,
    once: Annotated[bool, typer.Option("--once", help="Run every job once and exit (for a cron job).")] = False,
    data_dir: DataDir = None,
) -> None:
    """Run the scheduler: closes idle sessions, archives them, enforces retention; serves erasures."""
    from nats.errors import NoServersError

    from zapflow.platform.service import run
    from zapflow.scheduler.app import SCHEDULER, run_jobs_once
    from zapflow.scheduler.settings import SchedulerSettings
    from zapflow.store.errors import StoreError

    settings = _settings(SchedulerSettings, host=host, port=port)
    if once:  # a one-shot command, beside the stack; the service reads its environment alone
        settings = settings.model_copy(
            update={"core": _target(data_dir, ("nats_url", "database_url", "analytics_path")).core}
        )
    try:
        if not once:
            run(SCHEDULER, settings)
            return
        succeeded = asyncio.run(run_jobs_once(settings.core))
    except StoreError as error:
        raise _fail(str(error)) from None
    except (NoServersError, OSError, TimeoutError) as error:
        raise _nats_unreachable(settings.core.nats_url, error) from None
    for job, ok in succeeded.items():
        out.print(f"{job}: {'done' if ok else '[red]failed[/] (see the log)'}")
    if not all(succeeded.values()):
        raise typer.Exit(code=1)


@app.command()
def operator(
    host: Host = None,
    port: Port = None,
    namespace: Annotated[
        str | None, typer.Option(help="Watch BotTenants in this namespace only (default: every namespace).")
    ] = None,
    standalone: Annotated[
        bool | None, typer.Option("--standalone", help="Run without kopf peering (a single replica).")
    ] = None,
) -> None:
    """Run the Kubernetes operator: BotTenant resources into the tenant registry, with status conditions."""
    from nats.errors import NoServersError

    from zapflow.operator.handlers import run as run_operator
    from zapflow.operator.settings import OperatorSettings
    from zapflow.store.errors import StoreError

    settings = _settings(OperatorSettings, host=host, port=port, namespace=namespace, standalone=standalone)
    configure_logging("operator", settings.core.log_level, settings.core.log_json)
    try:
        asyncio.run(run_operator(settings))
    except StoreError as error:
        raise _fail(str(error)) from None
    except (NoServersError, OSError, TimeoutError) as error:
        raise _nats_unreachable(settings.core.nats_url, error) from None


@app.command()
def sandbox(
    host: Host = None,
    port: Port = None,
    webhook_url: Annotated[str | None, typer.Option(help="The gateway's webhook URL.")] = None,
    tenant_file: Annotated[
        list[Path] | None, typer.Option("--tenant-file", "-f", help="BotTenant YAML files to learn numbers from.")
    ] = None,
) -> None:
    """Run the WhatsApp Cloud API sandbox and its web chat."""
    from zapflow.platform.service import run
    from zapflow.sandbox.app import sandbox_service
    from zapflow.sandbox.numbers import NumberConflict
    from zapflow.sandbox.settings import SandboxSettings
    from zapflow.tenants.files import TenantError
    from zapflow.tenants.secrets import SecretUnavailable

    settings = _settings(SandboxSettings, host=host, port=port, webhook_url=webhook_url, tenant_files=tenant_file)
    try:
        run(sandbox_service(settings), settings)
    except (TenantError, SecretUnavailable, NumberConflict) as error:
        raise _fail(f"cannot start the sandbox: {error}") from None


@app.command()
def dev(
    data_dir: Annotated[Path, typer.Option(help="Where all state lives.")] = DEFAULT_DATA_DIR,
    gateway_port: Annotated[int, typer.Option(help="Gateway (webhook) port.")] = 8000,
    conversation_port: Annotated[int, typer.Option(help="Conversation health/metrics port.")] = 8001,
    recorder_port: Annotated[int, typer.Option(help="Recorder health/metrics port.")] = 8002,
    scheduler_port: Annotated[int, typer.Option(help="Scheduler admin API, health and metrics port.")] = 8003,
    embedding_port: Annotated[int, typer.Option(help="Embedding service health/metrics port.")] = 8004,
    handoff_port: Annotated[int, typer.Option(help="Handoff service port: the agents' inbox and its API.")] = 8005,
    sandbox_port: Annotated[int, typer.Option(help="Sandbox and web chat port.")] = 8100,
    nats_port: Annotated[int, typer.Option(help="Embedded nats-server port.")] = 14222,
    redis_port: Annotated[int, typer.Option(help="Embedded redis-server port.")] = 16379,
) -> None:
    """Run the whole platform on this machine: NATS, Redis, every service and the sandbox."""
    from zapflow.dev.plan import DevPorts
    from zapflow.dev.stack import DevStackError, run_dev_stack

    ports = DevPorts(
        gateway=gateway_port,
        conversation=conversation_port,
        recorder=recorder_port,
        scheduler=scheduler_port,
        embedding=embedding_port,
        handoff=handoff_port,
        sandbox=sandbox_port,
        nats=nats_port,
        redis=redis_port,
    )
    try:
        run_dev_stack(data_dir.resolve(), ports, out)
    except DevStackError as error:
        raise _fail(escape(str(error))) from None  # it may end with a log's tail


@app.command()
def report(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant (default: every tenant).")] = None,
    since: Annotated[str | None, typer.Option(help="First UTC day, YYYY-MM-DD (default: --until - 29 days).")] = None,
    until: Annotated[str | None, typer.Option(help="Last UTC day, YYYY-MM-DD (default: today).")] = None,
    output_format: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    plot: Annotated[Path | None, typer.Option(help="Also draw daily volumes and response times into this PNG.")] = None,
    campaigns: Annotated[
        bool, typer.Option("--campaigns", help="One row per campaign created in the period instead of per day.")
    ] = False,
    analytics: Annotated[
        Path | None, typer.Option(help="The DuckDB analytics file (ZAPFLOW_ANALYTICS_PATH, .zapflow/analytics.duckdb).")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Daily figures per tenant and UTC day: volumes, response times, fallback, handoff, delivery, top rules.

    With --campaigns: each campaign created in the period, its recipients sent, delivered, read, failed, skipped.
    """
    import datetime as dt

    from zapflow.analytics import report as reports
    from zapflow.analytics.warehouse import WarehouseError, open_warehouse

    if output_format not in reports.FORMATS:
        raise _fail(f"--format: {escape(repr(output_format))} is not one of {', '.join(reports.FORMATS)}")
    if campaigns and plot is not None:
        raise _fail("--plot draws the daily figures: it cannot be combined with --campaigns")
    try:
        period = reports.report_period(since, until, today=dt.datetime.now(dt.UTC).date())
    except reports.ReportError as error:
        raise _fail(escape(str(error))) from None
    target = _target(data_dir, ("analytics_path",), analytics_path=analytics)
    path = target.core.analytics_path
    # The scheduler creates the file with its first archival: a file named by a flag or a
    # variable must exist, the stack's or the default one need not yet.
    archived = path.exists() or target.given("analytics_path")
    rows: list[reports.ReportRow] = []
    campaign_rows: list[reports.CampaignRow] = []
    try:
        if archived:
            connection = open_warehouse(path, read_only=True)
            try:
                if campaigns:
                    archived = reports.archived_campaigns(connection) > 0
                    campaign_rows = reports.build_campaign_report(connection, period, tenant) if archived else []
                else:
                    archived = reports.archived_sessions(connection) > 0
                    rows = reports.build_report(connection, period, tenant) if archived else []
            finally:
                connection.close()
    except WarehouseError as error:
        raise _fail(escape(str(error))) from None
    if campaigns:
        _print_campaign_report(campaign_rows, period, tenant, output_format, archived, path)
        return
    if plot is not None:
        # matplotlib takes a while to import: only when a plot is asked for.
        from zapflow.analytics.plot import plot_report

        try:
            plot_report(rows, period, plot)
        except OSError as error:
            raise _fail(f"cannot write the plot to {escape(str(plot))}: {error.strerror}") from None
    if output_format == "json":
        print(reports.to_json(rows), end="")
    elif output_format == "csv":
        print(reports.to_csv(rows), end="")
    elif rows:
        out.print(reports.to_table(rows, period))
    if not archived:
        # Beside a CSV or JSON document (which stays valid, and empty), the reason goes to stderr.
        (out if output_format == "table" else err).print(escape(reports.nothing_archived(path)), soft_wrap=True)
    elif not rows and output_format == "table":
        out.print(f"no data between {period.since} and {period.until}" + (f" for {escape(tenant)}" if tenant else ""))


def _print_campaign_report(
    rows: list[CampaignRow], period: Period, tenant: str | None, output_format: str, archived: bool, path: Path
) -> None:
    from zapflow.analytics import report as reports

    if output_format == "json":
        print(reports.campaigns_to_json(rows), end="")
    elif output_format == "csv":
        print(reports.campaigns_to_csv(rows), end="")
    elif rows:
        out.print(reports.campaigns_to_table(rows, period))
    if not archived:
        (out if output_format == "table" else err).print(escape(reports.no_campaigns_archived(path)), soft_wrap=True)
    elif not rows and output_format == "table":
        out.print(
            f"no campaigns created between {period.since} and {period.until}"
            + (f" for {escape(tenant)}" if tenant else "")
        )


def _nats_settings(data_dir: Path | None, nats_url: str | None) -> CoreSettings:
    return _target(data_dir, ("nats_url",), nats_url=nats_url).core


def _with_nats(core: CoreSettings, action: Callable[[Any], Awaitable[T]], tenants: bool) -> T:
    """Run an action on a short-lived NATS connection (with the tenant registry when asked), turning
    connection failures into a message."""
    from nats.errors import NoServersError

    from zapflow.platform.connections import Needs, connected

    async def main() -> T:
        async with connected("cli", core, Needs(redis=False, tenants=tenants), short_lived=True) as connections:
            return await action(connections)

    try:
        return asyncio.run(main())
    except (NoServersError, OSError, TimeoutError) as error:
        raise _nats_unreachable(core.nats_url, error) from None


def _with_registry(core: CoreSettings, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run an action against the tenant registry, turning connection failures into a message."""
    return _with_nats(core, lambda connections: action(connections.registry), tenants=True)


@tenant_app.command("apply")
def tenant_apply(
    file: Annotated[Path, typer.Option("--file", "-f", help="A YAML file with one or more BotTenant documents.")],
    nats_url: NatsUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Validate tenants and store them in the registry; running services pick them up live."""
    from zapflow.tenants.files import TenantError, load_tenant_documents

    try:
        tenants = load_tenant_documents(file)
    except TenantError as error:
        raise _fail(str(error)) from None
    core = _nats_settings(data_dir, nats_url)
    for tenant in tenants:
        if tenant.owner_uid:
            # It marks an entry the operator wrote for a BotTenant resource (and owns).
            raise _fail(f"{tenant.name}: metadata.uid is set by the operator, not in tenant files: remove it")
        inline = tenant.inline_secrets()
        if inline and not core.is_development:
            raise _fail(f"{tenant.name}: {', '.join(inline)}: inline values are refused outside development")

    async def apply(registry: Any) -> None:
        for tenant in tenants:
            try:
                revision = await registry.put(tenant)
            except TenantError as error:
                raise _fail(f"{tenant.name}: {error}") from None
            out.print(f"tenant [bold]{tenant.name}[/] applied (revision {revision})")
            if tenant.spec.scaling.dedicated:
                out.print(
                    f"note: {tenant.name}: spec.scaling.dedicated has no effect on a tenant applied from a file "
                    "(only the operator creates a dedicated workload, for a BotTenant resource): "
                    "the shared conversation replicas answer it",
                    soft_wrap=True,
                )

    _with_registry(core, apply)


@tenant_app.command("list")
def tenant_list(nats_url: NatsUrl = None, data_dir: DataDir = None) -> None:
    """List the tenants in the registry."""

    async def fetch(registry: Any) -> list[Any]:
        tenants: list[Any] = await registry.load_all()
        return tenants

    tenants = _with_registry(_nats_settings(data_dir, nats_url), fetch)
    table = Table("name", "phone number id", "responder", "rules", "graph api")
    for tenant in tenants:
        spec = tenant.spec
        table.add_row(
            tenant.name,
            spec.whatsapp.phone_number_id,
            spec.bot.responder,
            str(len(spec.bot.rules)),
            spec.whatsapp.graph_api_url,
        )
    out.print(table if tenants else "no tenants")


@tenant_app.command("get")
def tenant_get(
    name: str,
    output: Annotated[str, typer.Option("--output", "-o", help="yaml or json.")] = "yaml",
    nats_url: NatsUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Print one tenant; secret values are masked."""

    async def fetch(registry: Any) -> Any:
        return await registry.get(name)

    tenant = _with_registry(_nats_settings(data_dir, nats_url), fetch)
    if tenant is None:
        raise _fail(f"no tenant named {name}")
    document = tenant.redacted()
    print(json.dumps(document, indent=2) if output == "json" else yaml.safe_dump(document, sort_keys=False), end="")


@tenant_app.command("delete")
def tenant_delete(name: str, nats_url: NatsUrl = None, data_dir: DataDir = None) -> None:
    """Remove a tenant from the registry."""

    async def remove(registry: Any) -> bool:
        deleted: bool = await registry.delete(name)
        return deleted

    if not _with_registry(_nats_settings(data_dir, nats_url), remove):
        raise _fail(f"no tenant named {name}")
    out.print(f"tenant [bold]{name}[/] deleted")


def _erased(erasure: Coroutine[Any, Any, ErasureRecord]) -> ErasureRecord:
    """Run an erasure (a contact's or a tenant's); what stopped it as a one-line message."""
    from zapflow.privacy.erasure import ErasureError, ErasureIncomplete
    from zapflow.store.errors import StoreError

    try:
        return asyncio.run(erasure)
    except ErasureIncomplete as error:
        raise _fail(escape(f"erasure incomplete: {error}")) from None
    except (ErasureError, StoreError) as error:
        raise _fail(escape(str(error))) from None


@tenant_app.command("erase")
def tenant_erase(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: the tenant's data cannot be brought back.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Erase every trace of a tenant deleted from the registry (LGPD / GDPR); recorded without its data."""
    from zapflow.privacy.erasure import erase_tenant_once
    from zapflow.tenants.model import TENANT_NAME_PATTERN

    if not re.match(TENANT_NAME_PATTERN, name):
        raise _fail(escape(f"not a tenant name: {name!r}"))
    if not yes:
        raise _fail(
            f"this erases every conversation, message, handoff, campaign, agent, knowledge document and figure of "
            f"{name} from every store, and cannot be undone: run it again with --yes"
        )
    core = _target(data_dir, ("nats_url", "redis_url", "database_url", "analytics_path")).core
    record = _erased(erase_tenant_once(core, name))
    out.print(f"tenant {escape(name)} erased (erasure {record.id})")
    out.print_json(json.dumps(record.summary))


@tenant_app.command("schema")
def tenant_schema() -> None:
    """Print the JSON schema of a BotTenant (the one the CRD uses)."""
    from zapflow.tenants.schema import tenant_json_schema

    print(json.dumps(tenant_json_schema(), indent=2))


def _with_database(
    data_dir: Path | None, database_url: str | None, action: Callable[[str], Coroutine[Any, Any, T]]
) -> tuple[str, T]:
    """Run a schema action on the configured database; a bad URL or an unreachable server is a message."""
    from zapflow.store.errors import StoreError

    url = _target(data_dir, ("database_url",), database_url=database_url).core.database_url
    try:
        return url, asyncio.run(action(url))
    except StoreError as error:
        raise _fail(str(error)) from None


def _revision_report(url: str, revision: str | None) -> str:
    from zapflow.store.engine import redacted
    from zapflow.store.migrate import head_revision

    head = head_revision()
    if revision is None:
        state = f"no migration applied (the newest is {head})"
    elif revision == head:
        state = f"revision {revision} (the newest)"
    else:
        state = f"revision {revision} (the newest is {head})"
    return f"database {escape(redacted(url))}: {state}"


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Option(help="Revision to upgrade to.")] = "head",
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Apply the schema migrations, all of them by default (safe to run again)."""
    from zapflow.store import migrate

    url, reached = _with_database(data_dir, database_url, lambda url: migrate.upgrade(url, revision))
    out.print(f"upgraded {_revision_report(url, reached)}")


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Revision to go back to; base reverts every migration.")],
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Revert schema migrations down to a revision (dropping what they created)."""
    from zapflow.store import migrate

    url, reached = _with_database(data_dir, database_url, lambda url: migrate.downgrade(url, revision))
    out.print(f"downgraded {_revision_report(url, reached)}")


@db_app.command("current")
def db_current(database_url: DatabaseUrl = None, data_dir: DataDir = None) -> None:
    """Show the revision the database schema is at."""
    from zapflow.store import migrate

    url, current = _with_database(data_dir, database_url, migrate.current_revision)
    out.print(_revision_report(url, current))


@contact_app.command("erase")
def contact_erase(
    tenant: Annotated[str, typer.Option(help="The tenant whose customer is erased.")],
    phone: Annotated[str, typer.Option(help="The customer's phone number, e.g. +55 11 98765-4321.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Erase a customer's messages and state from every store; the erasure is recorded without them."""
    from zapflow.privacy.erasure import ErasureError, erase_once, normalise_phone

    try:
        normalise_phone(phone)
    except ErasureError as error:
        raise _fail(str(error)) from None
    core = _target(data_dir, ("nats_url", "redis_url", "database_url", "analytics_path")).core
    if not yes and not typer.confirm(f"Erase this customer of {tenant} from every store? This cannot be undone"):
        raise _fail("nothing erased")
    record = _erased(erase_once(core, tenant, phone))
    out.print(f"erasure {record.id} recorded for tenant {record.tenant}")
    out.print_json(json.dumps(record.summary))


dead_letters_app = typer.Typer(
    no_args_is_help=True, help="Dead letters: what a service or the webhook could not handle (ZF_DLQ, 30 days)."
)
app.add_typer(dead_letters_app, name="dead-letters")


def _with_dead_letters(data_dir: Path | None, nats_url: str | None, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run an action against ZF_DLQ; an unreachable NATS, a missing stream or a bad request is a message."""
    from nats.errors import Error as NatsError

    from zapflow.platform.deadletters import DeadLetterError

    core = _nats_settings(data_dir, nats_url)
    try:
        return _with_nats(core, lambda connections: action(connections.js), tenants=False)
    except DeadLetterError as error:
        raise _fail(escape(str(error))) from None
    except (NatsError, OSError, TimeoutError) as error:
        raise _nats_unreachable(core.nats_url, error) from None


def _dead_letter_filter(**fields: str | None) -> Any:
    from zapflow.platform.deadletters import DeadLetterError, DeadLetterFilter

    try:
        return DeadLetterFilter(**fields)
    except DeadLetterError as error:
        raise _fail(escape(str(error))) from None


@dead_letters_app.command("list")
def dead_letters_list(
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant's.")] = None,
    service: Annotated[
        str | None, typer.Option("--service", help="Only this service's (gateway, recorder, ...).")
    ] = None,
    consumer: Annotated[
        str | None, typer.Option("--consumer", help="Only this consumer's (webhook: the gateway's unreadable parts).")
    ] = None,
    contact: Annotated[
        str | None, typer.Option("--contact", help="Only about this WhatsApp id (unknown: no readable contact).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many, the newest.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    nats_url: NatsUrl = None,
    data_dir: DataDir = None,
) -> None:
    """List dead letters, newest first, with their reason."""
    from rich.padding import Padding
    from rich.text import Text

    from zapflow.platform.deadletters import list_dead_letters, printable

    wanted = _dead_letter_filter(tenant=tenant, service=service, consumer=consumer, contact=contact)
    listing = _with_dead_letters(data_dir, nats_url, lambda js: list_dead_letters(js, wanted, limit))
    if as_json:
        document = {"matched": listing.matched, "dead_letters": [letter.summary() for letter in listing.letters]}
        print(json.dumps(document, indent=2))
        return
    if not listing.letters:
        out.print("no dead letters")
        return
    # A line of where it came from, then its reason on its own, indented: it fits any terminal.
    for letter in listing.letters:
        heading = Text(f"#{letter.seq}  {letter.at:%Y-%m-%d %H:%M:%S} UTC  ", style="bold")
        heading.append(printable(f"{letter.service}/{letter.consumer}  {letter.original_subject}"))
        heading.append(f"  {len(letter.payload)} bytes", style="dim")
        out.print(heading)
        out.print(Padding(Text(printable(letter.reason)), (0, 0, 0, 4)))
    out.print(f"{len(listing.letters)} of {listing.matched} dead letters, newest first")


@dead_letters_app.command("show")
def dead_letters_show(
    seq: Annotated[int, typer.Argument(min=1, help="The dead letter's stream sequence (the seq column of `list`).")],
    nats_url: NatsUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Show one dead letter: where it came from, why, and its payload."""
    from rich.text import Text

    from zapflow.platform.deadletters import printable, show

    letter = _with_dead_letters(data_dir, nats_url, lambda js: show(js, seq))
    payload = letter.payload_shown()
    fields = Table.grid(padding=(0, 2))
    for name, value in (
        ("seq", str(letter.seq)),
        ("at", letter.at.isoformat()),
        ("service", letter.service),
        ("consumer", letter.consumer),
        ("original subject", letter.original_subject),
        ("tenant", letter.tenant),
        ("contact", letter.contact),
        ("message id", letter.message_id),
        ("deliveries", str(letter.deliveries)),
        ("reason", letter.reason),
        ("payload", f"{payload.size} bytes, " + ("UTF-8 text" if payload.encoding == "utf-8" else "not UTF-8, in hex")),
    ):
        fields.add_row(name, Text(printable(value)))
    out.print(fields)
    print(payload.text)


@dead_letters_app.command("purge")
def dead_letters_purge(
    seq: Annotated[int | None, typer.Option("--seq", min=1, help="The one dead letter to purge.")] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Purge every dead letter of this tenant.")] = None,
    service: Annotated[str | None, typer.Option("--service", help="With --tenant: only this service's.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    nats_url: NatsUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Erase dead letters for good (the server overwrites them): one by sequence, or a tenant's."""
    from zapflow.platform.deadletters import purge_matching, purge_one

    if (seq is None) == (tenant is None):
        raise _fail("give either --seq N or --tenant T (with --service S to purge one service's only)")
    if seq is not None:
        if service is not None:
            raise _fail("--service goes with --tenant, not with --seq")
        if not yes and not typer.confirm(f"Purge dead letter {seq}? This cannot be undone"):
            raise _fail("nothing purged")
        letter = _with_dead_letters(data_dir, nats_url, lambda js: purge_one(js, seq))
        out.print(f"purged dead letter {letter.seq} ({escape(letter.service)}, {escape(letter.original_subject)})")
        return
    wanted = _dead_letter_filter(tenant=tenant, service=service)
    scope = f"of tenant {tenant}" + (f" from service {service}" if service else "")
    if not yes and not typer.confirm(f"Purge every dead letter {scope}? This cannot be undone"):
        raise _fail("nothing purged")
    purged = _with_dead_letters(data_dir, nats_url, lambda js: purge_matching(js, wanted))
    out.print(f"purged {purged} dead letters {escape(scope)}")


@app.command()
def status(
    interval: Annotated[
        float, typer.Option("--interval", min=0.5, help="Seconds between refreshes; the turn rate is over this window.")
    ] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit (for scripts).")] = False,
    output_format: Annotated[str, typer.Option("--format", help="With --once: table or json.")] = "table",
    nats_url: NatsUrl = None,
    data_dir: DataDir = None,
) -> None:
    """A live view of the platform: services and replicas, streams, consumers, dead letters, tenants, turn rate."""
    from nats.errors import Error as NatsError

    from zapflow.platform.status import Snapshot, StatusReader, render, watch

    if output_format not in ("table", "json"):
        raise _fail(f"--format: {escape(repr(output_format))} is not one of table, json")
    if output_format == "json" and not once:
        raise _fail("--format json prints one snapshot: add --once")
    core = _nats_settings(data_dir, nats_url)

    async def show(connections: Any) -> Snapshot | None:
        reader = StatusReader(connections, window_s=interval, follow_tenants=not once)
        if once:
            return await reader.read()
        await watch(reader, interval, out)
        return None

    try:
        snapshot = _with_nats(core, show, tenants=False)
    except KeyboardInterrupt:  # Ctrl-C ends the live view
        return
    except (NatsError, OSError, TimeoutError) as error:
        raise _nats_unreachable(core.nats_url, error) from None
    if snapshot is not None and output_format == "json":
        print(json.dumps(snapshot.document(), indent=2))
    elif snapshot is not None:
        out.print(render(snapshot))


kb_app = typer.Typer(
    no_args_is_help=True, help="Tenants' knowledge bases: ingest files, list, show and remove documents."
)
app.add_typer(kb_app, name="kb")

Tenant = Annotated[str, typer.Option("--tenant", help="The tenant's name.", show_default=False)]
# A knowledge hit's body in `zapflow search`: enough to recognise the passage (`kb show` prints it whole).
SHORTENED_BODY_CHARS = 300


def _tenant_name(tenant: str) -> str:
    from zapflow.tenants.model import TENANT_NAME_PATTERN

    if not re.fullmatch(TENANT_NAME_PATTERN, tenant):
        raise _fail(
            f"--tenant: {escape(repr(tenant))} is not a tenant name (lowercase letters, digits and '-', "
            "at most 63, starting and ending with a letter or digit)"
        )
    return tenant


def _language_code(language: str | None) -> str | None:
    from zapflow.knowledge.messages import LANGUAGE_PATTERN

    if language is not None and not re.fullmatch(LANGUAGE_PATTERN, language):
        raise _fail(f"--language: {escape(repr(language))} is not an ISO 639-1 code such as pt, es or en")
    return language


def _document_names(names: list[str]) -> list[str]:
    from zapflow.knowledge.messages import DOCUMENT_NAME_PATTERN

    for name in names:
        if not re.fullmatch(DOCUMENT_NAME_PATTERN, name):
            raise _fail(f"{escape(repr(name))} is not a document name (at most 255 characters, no control characters)")
    return names


def _with_knowledge(data_dir: Path | None, nats_url: str | None, action: Callable[[NATS], Awaitable[T]]) -> T:
    """Run an action (it asks through a KnowledgeClient) on a short-lived NATS connection; a refusal is a message."""
    from zapflow.knowledge.client import KnowledgeError

    async def run(connections: Any) -> T:
        try:
            return await action(connections.nc)
        except KnowledgeError as error:
            raise _knowledge_failed(error) from None

    return _with_nats(_nats_settings(data_dir, nats_url), run, tenants=False)


def _knowledge_failed(error: KnowledgeError, message: str | None = None) -> typer.Exit:
    """A KnowledgeError as a message (`message`: said instead of its own); if no service answered, how to start one."""
    hint = ""
    if error.code == "unavailable":
        hint = " (is the embedding service running? `zapflow embedding` runs it, `zapflow dev` the whole platform)"
    return _fail(escape(f"{error if message is None else message}{hint}"))


@kb_app.command("ingest")
def kb_ingest(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Markdown, text, CSV (question,answer) and PDF files, or folders of them (a folder's files are "
            "named by their path inside it).",
            show_default=False,
        ),
    ],
    tenant: Tenant,
    language: Annotated[
        str | None,
        typer.Option(
            help="The files' language (ISO 639-1, e.g. pt); default: detected per file. A CSV's language column wins."
        ),
    ] = None,
    nats_url: NatsUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Add or update documents; unchanged files are left alone, and a file that cannot be read stops it all."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.text import Text

    from zapflow.knowledge.client import KnowledgeClient, KnowledgeError
    from zapflow.knowledge.documents import UnreadableDocument
    from zapflow.knowledge.ingest import Ingested, check_fits, ingest, read_sources
    from zapflow.knowledge.text import LanguageDetector
    from zapflow.platform.deadletters import printable

    _tenant_name(tenant)
    try:
        sources = read_sources(paths, _language_code(language), LanguageDetector())
    except UnreadableDocument as error:
        raise _fail(escape(f"{error}; nothing was ingested")) from None

    async def run(nc: NATS) -> tuple[list[Ingested], KnowledgeError | None]:
        client = KnowledgeClient(nc)
        listing = await client.list_documents(tenant)
        check_fits(tenant, sources, listing, nc.max_payload)
        done: list[Ingested] = []
        # On a terminal the bar moves in place; elsewhere rich prints it once, when it ends.
        columns = (TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TextColumn("passages"))
        with Progress(*columns, TimeElapsedColumn(), console=err) as progress:
            bar = progress.add_task("embedding", total=sum(source.passage_count for source in sources))
            try:
                async for ingested in ingest(client, tenant, sources, listing, lambda n: progress.advance(bar, n)):
                    done.append(ingested)
            except KnowledgeError as error:
                return done, error
        return done, None

    done, failure = _with_knowledge(data_dir, nats_url, run)
    if done:
        table = Table("document", "chunks", "change", "embedded")
        for ingested in done:
            reply = ingested.reply
            change = (
                "unchanged" if reply.unchanged else f"{reply.added} added, {reply.removed} removed, {reply.kept} kept"
            )
            table.add_row(
                Text(printable(reply.document.name)), str(reply.document.chunks), change, str(ingested.embedded)
            )
        out.print(table)
        changed = sum(not ingested.reply.unchanged for ingested in done)
        embedded = sum(ingested.embedded for ingested in done)
        out.print(f"documents: {changed} changed, {len(done) - changed} unchanged; passages embedded: {embedded}")
    if failure is not None:
        stopped = sources[len(done)].path
        raise _knowledge_failed(failure, f"{stopped}: {failure}; the documents before it were ingested, not the rest")


@kb_app.command("list")
def kb_list(tenant: Tenant, nats_url: NatsUrl = None, data_dir: DataDir = None) -> None:
    """List a tenant's documents, and how much of its quota they use."""
    from rich.text import Text

    from zapflow.knowledge.client import KnowledgeClient
    from zapflow.platform.deadletters import printable

    _tenant_name(tenant)
    listing = _with_knowledge(data_dir, nats_url, lambda nc: KnowledgeClient(nc).list_documents(tenant))
    if listing.documents:
        table = Table("document", "kind", "origin", "chunks", "languages", "updated (UTC)")
        for document in listing.documents:
            table.add_row(
                Text(printable(document.name)),
                document.kind,
                document.origin,
                str(document.chunks),
                ", ".join(document.languages),
                f"{document.updated_at:%Y-%m-%d %H:%M:%S}",
            )
        out.print(table)
    else:
        out.print(f"no documents in tenant {tenant}'s knowledge base")
    model = escape(listing.model) if listing.model else "none (lexical search only)"
    out.print(
        f"documents: {len(listing.documents)}; chunks: {listing.chunks:,} of {listing.quota:,} (the quota); "
        f"turns indexed: {listing.turns:,}; model: {model}"
    )


@kb_app.command("show")
def kb_show(
    name: Annotated[str, typer.Argument(help="The document's name, as `zapflow kb list` shows it.")],
    tenant: Tenant,
    nats_url: NatsUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Show a document and each of its passages in full."""
    from rich.padding import Padding
    from rich.text import Text

    from zapflow.knowledge.client import KnowledgeClient
    from zapflow.knowledge.messages import ShowRequest
    from zapflow.platform.deadletters import printable

    _tenant_name(tenant)
    request = ShowRequest(name=_document_names([name])[0])
    shown = _with_knowledge(data_dir, nats_url, lambda nc: KnowledgeClient(nc).show_document(tenant, request))
    document = shown.document
    fields = Table.grid(padding=(0, 2))
    for field, value in (
        ("document", document.name),
        ("kind", document.kind),
        ("origin", document.origin),
        ("chunks", str(document.chunks)),
        ("languages", ", ".join(document.languages)),
        ("updated", f"{document.updated_at:%Y-%m-%d %H:%M:%S} UTC"),
        ("content hash", document.content_hash),
    ):
        fields.add_row(field, Text(printable(value)))
    out.print(fields)
    # Bodies come from files anyone could have written: Text (no markup), control characters escaped.
    for position, passage in enumerate(shown.passages, start=1):
        out.print()
        heading = Text(f"#{position}  ", style="bold")
        heading.append(printable(passage.title), style="bold")
        heading.append(f"  ({passage.language})", style="dim")
        out.print(heading)
        out.print(Padding(Text(printable(passage.body)), (0, 0, 0, 4), expand=False))


@kb_app.command("remove")
def kb_remove(
    names: Annotated[list[str], typer.Argument(help="Document names, as `zapflow kb list` shows them.")],
    tenant: Tenant,
    nats_url: NatsUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Remove documents and their passages; a name not found is reported (exit code 1)."""
    from zapflow.knowledge.client import KnowledgeClient
    from zapflow.knowledge.messages import RemoveRequest
    from zapflow.platform.deadletters import printable

    _tenant_name(tenant)
    request = RemoveRequest(names=_document_names(names))
    removed = _with_knowledge(data_dir, nats_url, lambda nc: KnowledgeClient(nc).remove_documents(tenant, request))
    for name in removed.removed:
        out.print(f"removed {escape(printable(name))}")
    if removed.missing:
        missing = ", ".join(escape(printable(name)) for name in removed.missing)
        raise _fail(f"tenant {tenant} has no document named {missing}")


@app.command()
def search(
    text: Annotated[str, typer.Argument(help="What to look for, in any words: search goes by meaning.")],
    tenant: Tenant,
    knowledge: Annotated[
        bool, typer.Option("--knowledge", help="Search the knowledge base instead of past conversations.")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, max=50, help="At most this many results.")] = 5,
    language: Annotated[
        str | None,
        typer.Option(
            help="Knowledge: search passages in this language (ISO 639-1); default: the text's own, when the base "
            "has several."
        ),
    ] = None,
    nats_url: NatsUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Search a tenant's past conversations (or with --knowledge, its knowledge base) by meaning."""
    from zapflow.knowledge.client import KnowledgeClient
    from zapflow.knowledge.messages import SearchRequest

    _tenant_name(tenant)
    if not text.strip():
        raise _fail("nothing to search for: the text is empty")
    if len(text) > 4_000:
        raise _fail(f"the text to search for has {len(text):,} characters, at most 4,000")
    request = SearchRequest(
        text=text, collection="knowledge" if knowledge else "turns", limit=limit, language=_language_code(language)
    )
    found = _with_knowledge(data_dir, nats_url, lambda nc: KnowledgeClient(nc).search(tenant, request))
    where = "the knowledge base" if knowledge else "past conversations"
    if not found.hits:
        out.print(f"no results in {where} of tenant {tenant}")
        return
    how = f"{found.mode} search" + (f" in {found.language}" if found.language else "")
    out.print(f"searched {where} of tenant {tenant} ({how}), best first:")
    for rank, hit in enumerate(found.hits, start=1):
        out.print()
        _print_hit(rank, hit, knowledge)


def _print_hit(rank: int, hit: Hit, knowledge: bool) -> None:
    """One result: its rank and scores, where it comes from, then its text (escaped, as Text: never markup)."""
    import textwrap

    from rich.padding import Padding
    from rich.text import Text

    from zapflow.platform.deadletters import printable

    similarity = "n/a (lexical)" if hit.similarity is None else f"{hit.similarity:.3f}"
    heading = Text(f"{rank}. score {hit.score:.3f}  similarity {similarity}  ", style="bold")
    if knowledge:
        heading.append(printable(hit.document))
        heading.append(f"  {printable(hit.title)}", style="bold")
        body = textwrap.shorten(hit.body, SHORTENED_BODY_CHARS, placeholder=" …")
        lines = [Text(printable(body))]
    else:
        heading.append(f"{hit.at:%Y-%m-%d %H:%M} UTC  " if hit.at else "")
        heading.append(printable(hit.contact))
        lines = [Text("customer: ", style="dim") + Text(printable(hit.title))]
        lines.append(Text("bot: ", style="dim") + Text(printable(hit.body)))
    heading.append(f"  ({hit.language})", style="dim")
    out.print(heading)
    for line in lines:
        out.print(Padding(line, (0, 0, 0, 4), expand=False))


# Last: their commands use the helpers above.
from zapflow.handoff.cli import agent_app, handoff_app  # noqa: E402
from zapflow.scheduler.cli import campaign_app  # noqa: E402

app.add_typer(handoff_app, name="handoff")
app.add_typer(agent_app, name="agent")
app.add_typer(campaign_app, name="campaign")
