"""Where a tenant's secrets come from, and reading them.

A BotTenant names its secrets (`SecretRef`) rather than holding them, outside development.
`resolve_secret` reads one now; `ResolvedSecrets` keeps what one revision of a tenant has read,
so that a mounted file is not read again on every webhook.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self

from pydantic import ConfigDict, Field, model_validator

from zapflow.tenants.base import Model


class SecretKeyRef(Model):
    # Hashable: ResolvedSecrets keeps values by reference.
    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Name of the Kubernetes Secret.", min_length=1)
    key: str = Field(description="Key inside the Secret.", min_length=1)


class SecretRef(Model):
    """Where a secret comes from: exactly one of value, env or secretKeyRef."""

    value: str | None = Field(default=None, description="The secret itself, inline. Allowed in development only.")
    env: str | None = Field(default=None, description="Name of an environment variable that holds it.")
    secret_key_ref: SecretKeyRef | None = Field(
        default=None, description="A key of a Kubernetes Secret, mounted under ZAPFLOW_SECRETS_DIR."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [n for n in ("value", "env", "secret_key_ref") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of value, env or secretKeyRef")
        return self


class SecretUnavailable(Exception):
    """A secret reference that cannot be resolved in this process."""


def resolve_secret(ref: SecretRef, secrets_dir: Path, allow_inline: bool = True) -> str:
    """The secret's value, read now."""
    if ref.value is not None:
        if not allow_inline:
            raise SecretUnavailable("inline secret values are refused outside development")
        return ref.value
    if ref.env is not None:
        found = os.environ.get(ref.env)
        if found is None:
            raise SecretUnavailable(f"environment variable {ref.env} is not set")
        return found
    assert ref.secret_key_ref is not None
    path = secrets_dir / ref.secret_key_ref.name / ref.secret_key_ref.key
    try:
        return path.read_text().strip()
    except OSError as error:
        raise SecretUnavailable(f"secret {ref.secret_key_ref.name}/{ref.secret_key_ref.key}: {error}") from error


class ResolvedSecrets:
    """The secrets one revision of a tenant has read, each read on first use and then kept.

    `BotTenant.secrets` holds one, and the registry parses every revision into a new BotTenant:
    so a tenant re-applied to the registry (after a Secret rotation, say) reads its secrets
    again, and otherwise each is read once. A secret that cannot be read is not kept: it is
    tried again on the next use.
    """

    def __init__(self) -> None:
        self._values: dict[tuple[str | None, SecretKeyRef | None], str] = {}

    def resolve(self, ref: SecretRef, secrets_dir: Path, allow_inline: bool) -> str:
        if ref.value is not None:
            # Nothing to read; whether inline values are allowed is checked on every use.
            return resolve_secret(ref, secrets_dir, allow_inline)
        source = (ref.env, ref.secret_key_ref)
        if source not in self._values:
            self._values[source] = resolve_secret(ref, secrets_dir, allow_inline)
        return self._values[source]
