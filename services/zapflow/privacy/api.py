"""The erasures resource of the admin API: erase a contact or a whole tenant, list past erasures."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from sqlalchemy.exc import SQLAlchemyError

from zapflow.platform.http import problems, require_admin
from zapflow.privacy.erasure import (
    Eraser,
    ErasureError,
    ErasureIncomplete,
    ErasureRecord,
    TenantStillRegistered,
    list_erasures,
    normalise_phone,
)
from zapflow.tenants.model import TENANT_NAME_PATTERN


class ErasureRequest(BaseModel):
    """The phone travels in the body, never in the URL, which proxies and access logs keep."""

    tenant: str = Field(pattern=TENANT_NAME_PATTERN, description="The tenant whose customer is erased.")
    phone: str = Field(min_length=6, max_length=32, description="The customer's phone number or WhatsApp id.")

    @field_validator("phone")
    @classmethod
    def _a_phone_number(cls, phone: str) -> str:
        # Refused here, a bad number gets the same 422 with its field's location as any other field.
        try:
            normalise_phone(phone)
        except ErasureError as error:
            raise ValueError(str(error)) from None
        return phone


class TenantErasureRequest(BaseModel):
    """The tenant's name twice: a typo must not erase another business."""

    tenant: str = Field(pattern=TENANT_NAME_PATTERN, description="The tenant erased, deleted from the registry first.")
    confirm: str = Field(description="The tenant's name again, exactly.")

    @model_validator(mode="after")
    def _confirmed(self) -> TenantErasureRequest:
        if self.confirm != self.tenant:
            raise ValueError(f"confirm must repeat the tenant's name exactly: {self.confirm!r} is not {self.tenant!r}")
        return self


def erasures_router(admin_token: SecretStr, current_eraser: Callable[..., Awaitable[Eraser]]) -> APIRouter:
    """The routes, served by whichever service holds an Eraser (`current_eraser` finds it)."""
    # A default rather than an Annotated alias: FastAPI resolves annotations in the module's
    # namespace, where a dependency chosen by the caller does not live.
    eraser = Depends(current_eraser)
    admin = Depends(require_admin(admin_token))
    router = APIRouter(prefix="/admin/v1/erasures", tags=["privacy"], dependencies=[admin], responses=problems(401))

    @router.post("", status_code=201, responses=problems(503))
    async def erase(erasure: ErasureRequest, service: Eraser = eraser) -> ErasureRecord:
        """Erase one contact of a tenant from every store; the record holds no personal data."""
        try:
            return await service.erase(erasure.tenant, erasure.phone, "admin-api")
        except ErasureIncomplete as error:
            raise HTTPException(status_code=503, detail=f"erasure incomplete: {error}") from None

    @router.post("/tenants", status_code=201, responses=problems(409, 503))
    async def erase_tenant(erasure: TenantErasureRequest, service: Eraser = eraser) -> ErasureRecord:
        """Erase every trace of a tenant deleted from the registry; the record holds no personal data."""
        try:
            return await service.erase_tenant(erasure.tenant, "admin-api")
        except TenantStillRegistered as error:
            raise HTTPException(status_code=409, detail=str(error)) from None
        except ErasureIncomplete as error:
            raise HTTPException(status_code=503, detail=f"erasure incomplete: {error}") from None

    @router.get("")
    async def erasures(
        tenant: Annotated[str, Query(pattern=TENANT_NAME_PATTERN)],
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        service: Eraser = eraser,
    ) -> list[ErasureRecord]:
        """A tenant's erasures, newest first."""
        try:
            return await list_erasures(service.engine, tenant, limit)
        # A driver's refused connection is an OSError, the rest SQLAlchemy's.
        except (SQLAlchemyError, OSError) as error:
            raise HTTPException(status_code=503, detail=f"the database cannot answer: {type(error).__name__}") from None

    return router
