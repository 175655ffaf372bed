"""The campaigns resource of the admin API: create one (JSON, or a CSV upload), list, show, cancel.

Served by the scheduler, which runs the campaigns; every route needs the admin bearer token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import AwareDatetime, BaseModel, Field, SecretStr
from sqlalchemy.exc import SQLAlchemyError

from zapflow.platform.http import problems, read_bounded_body, require_admin
from zapflow.platform.logging import get_logger
from zapflow.scheduler.campaigns import (
    MAX_RECIPIENTS,
    NAME_CHARS,
    CampaignInputError,
    CampaignRunner,
    new_campaign,
    parse_csv,
    parse_entries,
)
from zapflow.scheduler.wakeups import CampaignWakeups
from zapflow.store.campaigns import CampaignError, CampaignInfo, NewRecipient, Progress
from zapflow.store.models import RECIPIENT_STATES
from zapflow.tenants.model import TENANT_NAME_PATTERN

log = get_logger(__name__)

# A CSV of the largest campaign, with a few parameters per row, fits with room to spare.
MAX_CSV_BYTES = 32 * 1024 * 1024
CAMPAIGN_ID_PATTERN = r"^[0-9a-f]{12}$"
REQUESTER = "admin-api"
Category = Literal["marketing", "utility", "authentication"]
CampaignId = Annotated[str, Path(pattern=CAMPAIGN_ID_PATTERN, description="The campaign's id.")]


class TemplateRef(BaseModel):
    name: str = Field(pattern=r"^[a-z0-9_]{1,512}$", description="The approved template's name.")
    language: str = Field(pattern=r"^[a-z]{2,3}(_[A-Z]{2,4})?$", description="Its language code, e.g. pt_BR.")
    category: Category = Field(default="marketing", description="The category Meta approved it in.")


class RecipientIn(BaseModel):
    phone: str = Field(min_length=6, max_length=32, description="E.164 (+5511987654321) or its digits.")
    parameters: dict[Annotated[str, Field(max_length=16)], Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=dict,
        max_length=20,
        description="Template parameters by column, as in the CSV: body.1, header.1, button.0 ...",
    )


class CampaignRequest(BaseModel):
    tenant: str = Field(pattern=TENANT_NAME_PATTERN, description="The tenant whose customers are messaged.")
    template: TemplateRef
    name: str | None = Field(default=None, min_length=1, max_length=NAME_CHARS, description="A label for people.")
    start_at: AwareDatetime | None = Field(default=None, description="When to start (default: now).")
    recipients: list[RecipientIn] = Field(min_length=1, max_length=MAX_RECIPIENTS)


class TemplateView(BaseModel):
    name: str
    language: str
    category: str


class CampaignView(BaseModel):
    id: str
    tenant: str
    name: str
    template: TemplateView
    status: str
    reason: str | None = Field(description="Why it waits or failed.")
    start_at: datetime
    next_at: datetime | None = Field(description="When its next slice is due (null once it has ended).")
    created_at: datetime
    updated_at: datetime
    created_by: str
    recipients: int
    progress: dict[str, int] = Field(description="Recipients by state: queued, sending, sent, delivered, read ...")


class OutcomeView(BaseModel):
    status: str = Field(description="failed or skipped")
    reason: str
    error_code: int | None
    error_title: str | None
    count: int


class CampaignDetail(CampaignView):
    outcomes: list[OutcomeView] = Field(description="Failed and skipped recipients by reason, the largest first.")
    deferred: int = Field(description="Queued recipients waiting for a later try (131049).")
    next_retry_at: datetime | None


def campaign_view(campaign: CampaignInfo, by_status: dict[str, int]) -> CampaignView:
    return CampaignView(
        id=campaign.id,
        tenant=campaign.tenant,
        name=campaign.name,
        template=TemplateView(
            name=campaign.template_name, language=campaign.template_language, category=campaign.template_category
        ),
        status=campaign.status,
        reason=campaign.reason,
        start_at=campaign.start_at,
        next_at=campaign.next_at,
        created_at=campaign.created_at,
        updated_at=campaign.updated_at,
        created_by=campaign.created_by,
        recipients=sum(by_status.values()),
        progress={state: by_status.get(state, 0) for state in RECIPIENT_STATES},
    )


def campaign_detail(progress: Progress) -> CampaignDetail:
    return CampaignDetail(
        **campaign_view(progress.campaign, progress.by_status).model_dump(),
        outcomes=[
            OutcomeView(
                status=outcome.status,
                reason=outcome.reason,
                error_code=outcome.error_code,
                error_title=outcome.error_title,
                count=outcome.count,
            )
            for outcome in progress.outcomes
        ],
        deferred=progress.deferred,
        next_retry_at=progress.next_retry_at,
    )


def _unavailable(error: Exception) -> HTTPException:
    return HTTPException(status_code=503, detail=f"the database cannot answer: {type(error).__name__}")


async def _read_csv(request: Request) -> str:
    too_large = f"the CSV is larger than {MAX_CSV_BYTES // (1024 * 1024)} MB"
    body = await read_bounded_body(request, MAX_CSV_BYTES, too_large)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(status_code=400, detail="the CSV is not UTF-8 text (save it as CSV UTF-8)") from None


def campaigns_router(
    admin_token: SecretStr,
    current_runner: Callable[..., Awaitable[CampaignRunner]],
    current_wakeups: Callable[..., Awaitable[CampaignWakeups]],
) -> APIRouter:
    """The routes, served by whichever service holds a CampaignRunner (`current_runner` finds it)."""
    runner_dependency = Depends(current_runner)
    wakeups_dependency = Depends(current_wakeups)
    admin = Depends(require_admin(admin_token))
    router = APIRouter(prefix="/admin/v1/campaigns", tags=["campaigns"], dependencies=[admin], responses=problems(401))

    async def create(
        runner: CampaignRunner,
        wakeups: CampaignWakeups,
        tenant: str,
        template: TemplateRef,
        name: str | None,
        start_at: datetime | None,
        recipients: Callable[[], list[NewRecipient]],
    ) -> CampaignView:
        now = datetime.now(UTC)
        try:
            new = new_campaign(
                tenant, template.name, template.language, template.category, name, start_at, REQUESTER, now
            )
            listed = recipients()
        except CampaignInputError as error:
            raise HTTPException(status_code=400, detail=str(error)) from None
        if runner.registry.by_name(tenant) is None:
            raise HTTPException(status_code=400, detail=f"no tenant named {tenant} in the registry")
        try:
            campaign = await runner.store.create(new, listed, now)
        except (SQLAlchemyError, OSError) as error:
            raise _unavailable(error) from None
        try:
            await wakeups.wake(campaign.tenant, campaign.id, campaign.start_at)
        except Exception as error:  # created is what was asked; the scheduler's tick starts it anyway
            log.warning("campaign wake-up not scheduled", campaign=campaign.id, error=str(error))
        return campaign_view(campaign, {"queued": len(listed)})

    @router.post("", status_code=201, responses=problems(400, 503))
    async def create_from_json(
        request: CampaignRequest,
        runner: CampaignRunner = runner_dependency,
        wakeups: CampaignWakeups = wakeups_dependency,
    ) -> CampaignView:
        """Create a campaign from a JSON list of recipients; it starts at `start_at`, or now."""
        entries = [(recipient.phone, recipient.parameters) for recipient in request.recipients]
        return await create(
            runner,
            wakeups,
            request.tenant,
            request.template,
            request.name,
            request.start_at,
            lambda: parse_entries(entries),
        )

    @router.post(
        "/csv",
        status_code=201,
        responses=problems(400, 413, 503),
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "The recipient list: a phone column, then one column per template parameter.",
                "content": {"text/csv": {"schema": {"type": "string"}}},
            }
        },
    )
    async def create_from_csv(
        request: Request,
        tenant: Annotated[
            str, Query(pattern=TENANT_NAME_PATTERN, description="The tenant whose customers are messaged.")
        ],
        template: Annotated[str, Query(pattern=r"^[a-z0-9_]{1,512}$", description="The approved template's name.")],
        language: Annotated[str, Query(pattern=r"^[a-z]{2,3}(_[A-Z]{2,4})?$", description="e.g. pt_BR")],
        category: Annotated[Category, Query()] = "marketing",
        name: Annotated[str | None, Query(min_length=1, max_length=NAME_CHARS)] = None,
        start_at: Annotated[AwareDatetime | None, Query(description="When to start (default: now).")] = None,
        runner: CampaignRunner = runner_dependency,
        wakeups: CampaignWakeups = wakeups_dependency,
    ) -> CampaignView:
        """Create a campaign from an uploaded CSV (the body, as text/csv); see docs/scheduler.md for its columns."""
        text = await _read_csv(request)
        reference = TemplateRef(name=template, language=language, category=category)
        return await create(runner, wakeups, tenant, reference, name, start_at, lambda: parse_csv(text))

    @router.get("", responses=problems(503))
    async def campaigns(
        tenant: Annotated[str | None, Query(pattern=TENANT_NAME_PATTERN)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        runner: CampaignRunner = runner_dependency,
    ) -> list[CampaignView]:
        """Campaigns, the newest first, with their recipients counted by state."""
        try:
            listed = await runner.store.list_campaigns(tenant, limit)
        except (SQLAlchemyError, OSError) as error:
            raise _unavailable(error) from None
        return [campaign_view(item.campaign, item.by_status) for item in listed]

    @router.get("/{campaign_id}", responses=problems(404, 503))
    async def campaign(campaign_id: CampaignId, runner: CampaignRunner = runner_dependency) -> CampaignDetail:
        """One campaign's progress: recipients by state, failures and skips by reason, deferred tries."""
        try:
            progress = await runner.store.progress(campaign_id, datetime.now(UTC))
        except (SQLAlchemyError, OSError) as error:
            raise _unavailable(error) from None
        if progress is None:
            raise HTTPException(status_code=404, detail=f"no campaign {campaign_id}")
        return campaign_detail(progress)

    @router.post("/{campaign_id}/cancel", responses=problems(404, 409, 503))
    async def cancel(campaign_id: CampaignId, runner: CampaignRunner = runner_dependency) -> CampaignDetail:
        """Stop a campaign: queued recipients are skipped; messages already on their way still report."""
        now = datetime.now(UTC)
        try:
            cancelled = await runner.store.cancel(campaign_id, now)
            progress = await runner.store.progress(campaign_id, now) if cancelled is not None else None
        except CampaignError as error:
            raise HTTPException(status_code=409, detail=str(error)) from None
        except (SQLAlchemyError, OSError) as error:
            raise _unavailable(error) from None
        if progress is None:
            raise HTTPException(status_code=404, detail=f"no campaign {campaign_id}")
        return campaign_detail(progress)

    return router
