"""The supervisor's pure parts: the restart policy's delays, and settings rendered into an environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from zapflow.platform.settings import CoreSettings
from zapflow.platform.supervisor import OnFailure, settings_environment
from zapflow.sandbox.settings import SandboxSettings


def test_the_restart_delay_doubles_up_to_its_cap_and_a_crash_loop_gets_none() -> None:
    policy = OnFailure(first_delay_s=0.5, max_delay_s=3.0, crash_loop_restarts=5)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, None]


def test_settings_render_under_their_prefixes_and_read_back_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    core = CoreSettings.model_construct(
        nats_url="nats://127.0.0.1:4999",
        log_json=False,
        analytics_path=Path("/data/analytics.duckdb"),
        admin_token=SecretStr("s3cret"),
    )
    sandbox = SandboxSettings.model_construct(
        core=core, statuses="off", status_read_delay=1.5, tenant_files=[Path("/a.yaml"), Path("/b.yaml")]
    )

    rendered = settings_environment(sandbox)

    assert rendered == {
        "ZAPFLOW_NATS_URL": "nats://127.0.0.1:4999",
        "ZAPFLOW_LOG_JSON": "false",
        "ZAPFLOW_ANALYTICS_PATH": "/data/analytics.duckdb",
        "ZAPFLOW_ADMIN_TOKEN": "s3cret",
        "ZAPFLOW_SANDBOX_STATUSES": "off",
        "ZAPFLOW_SANDBOX_STATUS_READ_DELAY": "1.5",
        "ZAPFLOW_SANDBOX_TENANT_FILES": "/a.yaml,/b.yaml",
    }
    for name in [name for name in os.environ if name.startswith("ZAPFLOW_")]:
        monkeypatch.delenv(name)
    for name, value in rendered.items():
        monkeypatch.setenv(name, value)
    read = SandboxSettings(_env_file=None)  # type: ignore[call-arg]
    assert (read.statuses, read.status_read_delay, read.tenant_files) == (
        "off",
        1.5,
        [Path("/a.yaml"), Path("/b.yaml")],
    )
    assert read.core.nats_url == "nats://127.0.0.1:4999"
    assert read.core.log_json is False
    assert read.core.analytics_path == Path("/data/analytics.duckdb")
    assert read.core.admin_token.get_secret_value() == "s3cret"
    assert read.core.redis_url == CoreSettings.model_fields["redis_url"].default, "an unset field is left to the child"
