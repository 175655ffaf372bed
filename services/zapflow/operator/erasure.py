"""Erasing a deleted BotTenant's data (`spec.deletionPolicy: Erase`): a request to the scheduler's admin API.

The scheduler does the erasing (privacy/erasure.py): it holds a connection to every store and owns the
analytics file. The operator asks once the tenant's registry entry is gone, since the scheduler refuses
to erase a tenant still in the registry; any answer but 201 keeps the BotTenant's finalizer, and the
request is made again (every step of an erasure is idempotent).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import SecretStr

ERASE = "Erase"
# Served by the scheduler (privacy/api.py).
TENANT_ERASURES = "/admin/v1/erasures/tenants"
CREATED = 201
# The most of the scheduler's refusal an event shows.
DETAIL_LIMIT = 500


def wants_erasure(body: Mapping[str, Any]) -> bool:
    """Whether the resource asks for its data to be erased on delete, as written (even in a spec invalid otherwise)."""
    return (body.get("spec") or {}).get("deletionPolicy") == ERASE


class ErasureFailed(Exception):
    """The scheduler did not erase the tenant; the message says why, for the event and the retry."""


class SchedulerErasures:
    """The scheduler's tenant erasures, asked for with the admin token."""

    def __init__(self, scheduler_url: str, admin_token: SecretStr, timeout_s: float) -> None:
        self._url = scheduler_url.rstrip("/")
        self._token = admin_token
        self._timeout_s = timeout_s

    async def erase(self, tenant: str) -> dict[str, Any]:
        """Erase the tenant (out of the registry) from every store; the scheduler's record of it."""
        headers = {"Authorization": f"Bearer {self._token.get_secret_value()}"}
        body = {"tenant": tenant, "confirm": tenant}
        try:
            async with httpx.AsyncClient(base_url=self._url, timeout=self._timeout_s) as client:
                response = await client.post(TENANT_ERASURES, json=body, headers=headers)
        except httpx.HTTPError as error:
            raise ErasureFailed(f"cannot reach the scheduler at {self._url}: {error!r}") from error
        if response.status_code != CREATED:
            raise ErasureFailed(f"the scheduler answered {response.status_code}: {_detail(response)}")
        record: dict[str, Any] = response.json()
        return record


def _detail(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    detail = payload.get("detail") if isinstance(payload, dict) else None
    return str(detail or response.text or response.reason_phrase)[:DETAIL_LIMIT]
