"""The stack file: where a running `zapflow dev` says its servers are, for the CLI run beside it.

`zapflow dev` records the addresses of its NATS, Redis, database and analytics file in
`<data dir>/stack.json`; a CLI command run in the directory that holds `.zapflow` (or given
`--data-dir`) reads them. They rank below a flag and a ZAPFLOW_* variable and above the
defaults, so pointing a command elsewhere keeps working. Services never read the file: their
settings come from their environment alone, as in a cluster.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource

from zapflow.platform.settings import CoreSettings

STACK_FILE = "stack.json"
# Where `zapflow dev` keeps its state unless told otherwise, relative to where it runs.
DEFAULT_DATA_DIR = Path(".zapflow")
# A local server answers within milliseconds; a second leaves room for a loaded machine.
PROBE_TIMEOUT_S = 1.0
DEFAULT_PORTS = {"nats": 4222, "redis": 6379}


class StackFileError(Exception):
    """The stack file cannot be read; the message says which file and why."""


@dataclass(frozen=True)
class StackAddresses:
    """Where a stack's servers are. Paths and SQLite URLs are absolute: any directory can use them."""

    nats_url: str
    redis_url: str
    database_url: str
    analytics_path: str
    admin_url: str  # the scheduler's admin API

    def settings(self) -> dict[str, Any]:
        """The CoreSettings fields these addresses set (the admin API's URL is not one)."""
        return {name: value for name, value in asdict(self).items() if name in CoreSettings.model_fields}


def record(data_dir: Path, addresses: StackAddresses) -> Path:
    """Write the stack file of a data directory; a command reading it meanwhile sees the old or the new one."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / STACK_FILE
    partial = path.with_name(f".{STACK_FILE}.partial")
    partial.write_text(json.dumps(asdict(addresses), indent=2) + "\n")
    os.replace(partial, path)
    return path


def discover(data_dir: Path) -> StackAddresses | None:
    """The addresses a stack recorded in `data_dir`, or None when it holds no stack file."""
    path = data_dir / STACK_FILE
    try:
        recorded = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise StackFileError(f"cannot read {path}: {error}") from None
    expected = [field.name for field in fields(StackAddresses)]
    missing = [name for name in expected if name not in recorded] if isinstance(recorded, dict) else expected
    if missing:
        raise StackFileError(f"{path} is not a stack file: {', '.join(missing)} missing")
    return StackAddresses(**{name: str(recorded[name]) for name in expected})


def settings_beside(addresses: StackAddresses) -> type[CoreSettings]:
    """CoreSettings that take the stack's addresses where no flag, variable or .env sets them."""

    class StackCoreSettings(CoreSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            stack_file = InitSettingsSource(settings_cls, init_kwargs=addresses.settings())
            return init_settings, env_settings, dotenv_settings, stack_file, file_secret_settings

    return StackCoreSettings


def answers(url: str) -> bool:
    """Whether a server accepts connections at a `scheme://host:port` URL (NATS, Redis)."""
    address = urlsplit(url)
    port = address.port or DEFAULT_PORTS.get(address.scheme)
    if address.hostname is None or port is None:
        return False
    try:
        with socket.create_connection((address.hostname, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False
