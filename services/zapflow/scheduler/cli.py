"""`zapflow campaign` and `zapflow contact opt-out|opt-in`: campaigns and customers' consent, for scripts and people.

The commands work on the relational store directly (found beside a `zapflow dev` stack like
every command's), and read the tenant registry on NATS to refuse a tenant that does not exist;
the scheduler need not run for a campaign to be created, and sends it once it does.
`zapflow.cli` registers these commands; import it, not this module, first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from zapflow.cli import Address, DataDir, Tenant, _fail, _nats_unreachable, _target, _tenant_name, contact_app, err, out

if TYPE_CHECKING:
    from zapflow.platform.connections import Connections
    from zapflow.store.campaigns import CampaignInfo, CampaignStore, Progress

T = TypeVar("T")

campaign_app: typer.Typer = typer.Typer(
    no_args_is_help=True,
    help="Campaigns: one approved template sent to a list of a tenant's customers, inside WhatsApp's rules.",
)

# What the commands read and write: campaigns and preferences in SQL; tenants on NATS.
USES: tuple[Address, ...] = ("nats_url", "database_url")
CampaignId = Annotated[str, typer.Argument(help="The campaign's id, as `zapflow campaign list` shows it.")]
Phone = Annotated[str, typer.Argument(help="The customer's phone number, e.g. +55 11 98765-4321.", show_default=False)]
# Progress columns, in the order a message goes through them.
SHOWN_STATES = ("queued", "sending", "sent", "delivered", "read", "failed", "skipped")


def _with_store(
    data_dir: Path | None, action: Callable[[CampaignStore, Connections], Awaitable[T]], tenants: bool
) -> T:
    """Run an action on the store (and the registry, when `tenants`); an unreachable store is a message."""
    from nats.errors import NoServersError
    from sqlalchemy.exc import SQLAlchemyError

    from zapflow.platform.connections import Needs, connected
    from zapflow.store.campaigns import CampaignError, CampaignStore
    from zapflow.store.engine import redacted
    from zapflow.store.errors import StoreError

    core = _target(data_dir, USES if tenants else ("database_url",)).core
    needs = Needs(bus=tenants, redis=False, tenants=tenants, database=True)

    async def main() -> T:
        async with connected("cli", core, needs, short_lived=True) as connections:
            return await action(CampaignStore(connections.database), connections)

    try:
        return asyncio.run(main())
    except CampaignError as error:
        raise _fail(escape(str(error))) from None
    except StoreError as error:
        raise _fail(escape(str(error))) from None
    except SQLAlchemyError as error:
        raise _fail(escape(f"the database {redacted(core.database_url)} failed: {type(error).__name__}")) from None
    except (NoServersError, OSError, TimeoutError) as error:
        raise _nats_unreachable(core.nats_url, error) from None


async def _known_tenant(connections: Connections, tenant: str) -> None:
    if await connections.registry.get(tenant) is None:
        raise _fail(f"no tenant named {tenant} in the registry (`zapflow tenant list` shows them)")


def _contact(phone: str) -> str:
    from zapflow.privacy.erasure import ErasureError, normalise_phone

    try:
        return normalise_phone(phone)
    except ErasureError as error:
        raise _fail(f"PHONE: {escape(str(error))}") from None


def _when(value: datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S} UTC"


def _settled(by_status: dict[str, int]) -> str:
    """Sent so far (delivered and read included) of all recipients."""
    reached = sum(by_status.get(state, 0) for state in ("sent", "delivered", "read"))
    return f"{reached}/{sum(by_status.values())}"


# --- zapflow campaign create | list | show | cancel ---


@campaign_app.command("create")
def campaign_create(
    tenant: Tenant,
    template: Annotated[str, typer.Option(help="The approved template's name.", show_default=False)],
    language: Annotated[str, typer.Option(help="The template's language code, e.g. pt_BR.", show_default=False)],
    contacts: Annotated[
        Path,
        typer.Option(
            help="CSV: a phone column, then one column per parameter (body.1, header.1, button.0 ...); "
            "see docs/scheduler.md.",
            show_default=False,
        ),
    ],
    category: Annotated[
        str, typer.Option(help="The category Meta approved the template in: marketing, utility or authentication.")
    ] = "marketing",
    at: Annotated[
        str | None,
        typer.Option("--at", help="When to start, with its zone: 2026-12-01T09:00:00-03:00 (default: now)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="A label for people (default: the template and the time).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Create a campaign: the scheduler sends it at the campaign's share of the number's rate, within the limits."""
    from zapflow.scheduler.campaigns import CampaignInputError, new_campaign, parse_csv

    _tenant_name(tenant)
    start_at = None
    if at is not None:
        try:
            start_at = datetime.fromisoformat(at)
        except ValueError:
            raise _fail(f"--at: {escape(repr(at))} is not a time such as 2026-12-01T09:00:00-03:00") from None
    try:
        text = contacts.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise _fail(f"{escape(str(contacts))}: not UTF-8 text (save it as CSV UTF-8)") from None
    except OSError as error:
        raise _fail(f"cannot read {escape(str(contacts))}: {error.strerror}") from None
    now = datetime.now(UTC)
    try:
        new = new_campaign(tenant, template, language, category, name, start_at, "cli", now)
        recipients = parse_csv(text)
    except CampaignInputError as error:
        err.print(f"[bold red]error:[/] nothing was created; {len(error.problems)} problem(s):", soft_wrap=True)
        for problem in error.problems:
            err.print(Text(f"  {contacts.name}: {problem}"), soft_wrap=True)
        raise typer.Exit(code=1) from None

    async def create(store: CampaignStore, connections: Connections) -> CampaignInfo:
        from nats.js.errors import NoStreamResponseError

        from zapflow.scheduler.timers import schedule_timer
        from zapflow.scheduler.wakeups import CAMPAIGN

        await _known_tenant(connections, tenant)
        campaign = await store.create(new, recipients, now)
        # Woken at its start by the scheduler; without the timers' stream (no scheduler ran on this bus
        # yet), the scheduler's tick starts it once one runs.
        with contextlib.suppress(NoStreamResponseError):
            await schedule_timer(connections.js, CAMPAIGN, campaign.tenant, campaign.id, campaign.start_at)
        return campaign

    campaign = _with_store(data_dir, create, tenants=True)
    starts = "now" if campaign.start_at <= now else f"at {_when(campaign.start_at)}"
    out.print(
        f"campaign {campaign.id} created for tenant {tenant}: {len(recipients)} recipients, template "
        f"{campaign.template_name} ({campaign.template_language}, {campaign.template_category}); starts {starts}",
        soft_wrap=True,
    )
    out.print(f"the scheduler sends it; `zapflow campaign show {campaign.id}` follows its progress", soft_wrap=True)


@campaign_app.command("list")
def campaign_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's campaigns.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many, the newest first.")] = 50,
    data_dir: DataDir = None,
) -> None:
    """List campaigns, the newest first, with how far each got."""
    if tenant is not None:
        _tenant_name(tenant)
    listed = _with_store(data_dir, lambda store, _: store.list_campaigns(tenant, limit), tenants=False)
    if not listed:
        out.print("no campaigns" + (f" in tenant {tenant}" if tenant else ""))
        return
    table = Table("id", "tenant", "name", "template", "status", "sent", "failed", "skipped", "created (UTC)")
    for item in listed:
        campaign = item.campaign
        table.add_row(
            campaign.id,
            campaign.tenant,
            Text(campaign.name),
            f"{campaign.template_name} ({campaign.template_language})",
            campaign.status,
            _settled(item.by_status),
            str(item.by_status.get("failed", 0)),
            str(item.by_status.get("skipped", 0)),
            f"{campaign.created_at:%Y-%m-%d %H:%M}",
        )
    out.print(table)


def _print_progress(progress: Progress) -> None:
    campaign = progress.campaign
    fields = Table.grid(padding=(0, 2))
    for label, value in (
        ("campaign", campaign.id),
        ("tenant", campaign.tenant),
        ("name", campaign.name),
        ("template", f"{campaign.template_name} ({campaign.template_language}, {campaign.template_category})"),
        ("status", campaign.status),
        ("reason", campaign.reason or "-"),
        ("starts", _when(campaign.start_at)),
        ("next slice", _when(campaign.next_at)),
        ("created", f"{_when(campaign.created_at)} by {campaign.created_by}"),
        ("recipients", str(progress.total)),
    ):
        fields.add_row(label, Text(value))
    out.print(fields)
    states = Table(*SHOWN_STATES, title="recipients by state")
    states.add_row(*(str(progress.by_status.get(state, 0)) for state in SHOWN_STATES))
    out.print(states)
    if progress.deferred:
        out.print(
            f"deferred (131049, tried again later): {progress.deferred}, the first at {_when(progress.next_retry_at)}"
        )
    if progress.outcomes:
        reasons = Table("state", "reason", "error", "count", title="failed and skipped, by reason")
        for outcome in progress.outcomes:
            error = f"{outcome.error_code or ''} {outcome.error_title or ''}".strip() or "-"
            reasons.add_row(outcome.status, outcome.reason, Text(error), str(outcome.count))
        out.print(reasons)


@campaign_app.command("show")
def campaign_show(campaign_id: CampaignId, data_dir: DataDir = None) -> None:
    """Show a campaign's progress: recipients by state, failures and skips by reason, why it waits."""
    progress = _with_store(data_dir, lambda store, _: store.progress(campaign_id, datetime.now(UTC)), tenants=False)
    if progress is None:
        raise _fail(f"no campaign {escape(campaign_id)} (`zapflow campaign list` shows them)")
    _print_progress(progress)


@campaign_app.command("cancel")
def campaign_cancel(campaign_id: CampaignId, data_dir: DataDir = None) -> None:
    """Cancel a campaign: the recipients still queued are skipped; messages already on their way still report."""
    cancelled = _with_store(data_dir, lambda store, _: store.cancel(campaign_id, datetime.now(UTC)), tenants=False)
    if cancelled is None:
        raise _fail(f"no campaign {escape(campaign_id)} (`zapflow campaign list` shows them)")
    out.print(f"campaign {cancelled.id} cancelled: nothing more is sent")


# --- zapflow contact opt-out | opt-in ---


@contact_app.command("opt-out")
def contact_opt_out(phone: Phone, tenant: Tenant, data_dir: DataDir = None) -> None:
    """Opt a customer out of the tenant's campaigns: no campaign messages them again until they are opted in."""
    _tenant_name(tenant)
    contact = _contact(phone)

    async def opt_out(store: CampaignStore, connections: Connections) -> bool:
        await _known_tenant(connections, tenant)
        return await store.opt_out(tenant, contact, "admin", datetime.now(UTC))

    if _with_store(data_dir, opt_out, tenants=True):
        out.print(f"{escape(phone)} is opted out of tenant {tenant}'s campaigns")
    else:
        out.print(f"{escape(phone)} was already opted out of tenant {tenant}'s campaigns")


@contact_app.command("opt-in")
def contact_opt_in(phone: Phone, tenant: Tenant, data_dir: DataDir = None) -> None:
    """Let the tenant's campaigns message a customer again (only with their consent: they opted out before)."""
    _tenant_name(tenant)
    contact = _contact(phone)

    async def opt_in(store: CampaignStore, connections: Connections) -> bool:
        await _known_tenant(connections, tenant)
        return await store.opt_in(tenant, contact, datetime.now(UTC))

    if _with_store(data_dir, opt_in, tenants=True):
        out.print(f"{escape(phone)} is opted in to tenant {tenant}'s campaigns again")
    else:
        out.print(f"{escape(phone)} was not opted out of tenant {tenant}'s campaigns: nothing changed")
