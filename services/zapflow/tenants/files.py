"""BotTenant documents from YAML files and JSON, validated with errors that name the broken field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from zapflow.tenants.model import BotTenant


class TenantError(ValueError):
    """A tenant document that does not validate; the message names every broken field."""


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_tenant(document: Any, source: str = "tenant") -> BotTenant:
    if not isinstance(document, dict):
        raise TenantError(f"{source}: expected a BotTenant mapping, got {type(document).__name__}")
    try:
        return BotTenant.model_validate(document)
    except ValidationError as error:
        problems = [f"  {_location(e['loc']) or '(document)'}: {e['msg']}" for e in error.errors()]
        raise TenantError(f"{source} is not a valid BotTenant:\n" + "\n".join(problems)) from None


def load_tenant_documents(path: Path) -> list[BotTenant]:
    """Every BotTenant in a YAML file (several documents separated by ---)."""
    import yaml

    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as error:
        raise TenantError(f"{path}: not valid YAML: {error}") from None
    except OSError as error:
        raise TenantError(f"{path}: {error.strerror}") from None
    if not documents:
        raise TenantError(f"{path}: no BotTenant document in the file")
    return [parse_tenant(d, f"{path} (document {i + 1})") for i, d in enumerate(documents)]
