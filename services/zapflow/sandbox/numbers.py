"""The business phone numbers the sandbox answers for, learned from tenant files or registered live."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zapflow.tenants.files import load_tenant_documents
from zapflow.tenants.model import BotTenant
from zapflow.tenants.secrets import resolve_secret


@dataclass(frozen=True)
class SandboxNumber:
    """One WhatsApp business number with the credentials Meta would hold for it."""

    tenant: str
    phone_number_id: str
    access_token: str = field(repr=False)
    app_secret: str = field(repr=False)
    display_name: str
    display_phone_number: str
    waba_id: str

    def public(self) -> dict[str, Any]:
        """What the API may show: everything but the credentials."""
        return {
            "tenant": self.tenant,
            "phone_number_id": self.phone_number_id,
            "display_name": self.display_name,
            "display_phone_number": self.display_phone_number,
            "waba_id": self.waba_id,
        }

    def token_matches(self, token: str) -> bool:
        return hmac.compare_digest(self.access_token.encode(), token.encode())


def _stable_digits(seed: str, length: int) -> str:
    return str(int(hashlib.sha256(seed.encode()).hexdigest(), 16))[:length]


def default_display_phone_number(phone_number_id: str) -> str:
    """A plausible US test number (1555...) derived from the id, stable across restarts."""
    return "1555" + _stable_digits("display:" + phone_number_id, 7)


def default_waba_id(phone_number_id: str) -> str:
    """A stable WhatsApp Business Account id for the webhook's entry[].id."""
    return _stable_digits("waba:" + phone_number_id, 15)


def number_from_tenant(tenant: BotTenant, secrets_dir: Path) -> SandboxNumber:
    whatsapp = tenant.spec.whatsapp
    return SandboxNumber(
        tenant=tenant.name,
        phone_number_id=whatsapp.phone_number_id,
        access_token=resolve_secret(whatsapp.access_token, secrets_dir),
        app_secret=resolve_secret(whatsapp.app_secret, secrets_dir),
        display_name=tenant.name,
        display_phone_number=default_display_phone_number(whatsapp.phone_number_id),
        waba_id=default_waba_id(whatsapp.phone_number_id),
    )


def tenant_yaml_files(paths: Iterable[Path]) -> list[Path]:
    """The given files, with each directory replaced by the YAML files it holds."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
        else:
            files.append(path)
    return files


def load_tenants(paths: Iterable[Path]) -> list[BotTenant]:
    """Every tenant in the files (each directory's YAML files); raises TenantError."""
    return [tenant for path in tenant_yaml_files(paths) for tenant in load_tenant_documents(path)]


class NumberConflict(ValueError):
    """A phone number id already registered by another tenant."""


class NumberDirectory:
    """The registered numbers, by phone number id."""

    def __init__(self) -> None:
        self._by_id: dict[str, SandboxNumber] = {}

    def register(self, number: SandboxNumber) -> bool:
        """Add or update a number; True when it is new. A tenant cannot take another's number."""
        existing = self._by_id.get(number.phone_number_id)
        if existing is not None and existing.tenant != number.tenant:
            raise NumberConflict(
                f"phone number id {number.phone_number_id} already belongs to tenant {existing.tenant}"
            )
        self._by_id[number.phone_number_id] = number
        return existing is None

    def get(self, phone_number_id: str) -> SandboxNumber | None:
        return self._by_id.get(phone_number_id)

    def token_is_known(self, token: str) -> bool:
        """Whether any number accepts this token (compared in constant time to each)."""
        matches = [number.token_matches(token) for number in self._by_id.values()]
        return any(matches)

    def all(self) -> list[SandboxNumber]:
        return sorted(self._by_id.values(), key=lambda n: (n.tenant, n.phone_number_id))
