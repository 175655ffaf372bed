"""`zapflow tenant apply|list|get|delete` as a person runs them, against a real nats-server."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from tests.support.cli import run_zapflow
from tests.support.servers import ManagedServer
from tests.support.tenants import tenant_document


def zapflow(nats: ManagedServer, *args: str) -> subprocess.CompletedProcess[str]:
    return run_zapflow({**os.environ, "ZAPFLOW_NATS_URL": nats.url, "COLUMNS": "200"}, *args)


def test_apply_list_get_delete(nats: ManagedServer, tmp_path: Path) -> None:
    document = tenant_document()
    name = document["metadata"]["name"]
    path = tmp_path / "tenant.yaml"
    path.write_text(yaml.safe_dump(document))

    applied = zapflow(nats, "tenant", "apply", "-f", str(path))
    assert applied.returncode == 0, applied.stderr
    assert f"tenant {name} applied" in applied.stdout

    listed = zapflow(nats, "tenant", "list")
    assert name in listed.stdout
    assert document["spec"]["whatsapp"]["phoneNumberId"] in listed.stdout

    shown = zapflow(nats, "tenant", "get", name)
    assert shown.returncode == 0
    assert yaml.safe_load(shown.stdout)["spec"]["whatsapp"]["appSecret"] == {"value": "***"}
    for secret in ("appSecret", "accessToken", "verifyToken"):
        assert document["spec"]["whatsapp"][secret]["value"] not in shown.stdout

    assert zapflow(nats, "tenant", "delete", name).returncode == 0
    missing = zapflow(nats, "tenant", "get", name)
    assert missing.returncode == 1
    assert f"no tenant named {name}" in missing.stderr


def test_a_broken_file_names_the_broken_field_and_stores_nothing(nats: ManagedServer, tmp_path: Path) -> None:
    document = tenant_document()
    document["spec"]["whatsapp"]["phoneNumberId"] = "+55 11 not digits"
    del document["spec"]["whatsapp"]["accessToken"]
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(document))

    result = zapflow(nats, "tenant", "apply", "-f", str(path))

    assert result.returncode == 1
    assert "spec.whatsapp.phoneNumberId" in result.stderr
    assert "spec.whatsapp.accessToken" in result.stderr
    assert "Traceback" not in result.stderr
    assert "no tenants" in zapflow(nats, "tenant", "list").stdout


def test_two_tenants_cannot_share_a_number(nats: ManagedServer, tmp_path: Path) -> None:
    first, second = tenant_document(), tenant_document()
    second["spec"]["whatsapp"]["phoneNumberId"] = first["spec"]["whatsapp"]["phoneNumberId"]
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump_all([first, second]))
    result = zapflow(nats, "tenant", "apply", "-f", str(path))
    assert result.returncode == 1
    assert "already belongs to tenant" in result.stderr


def test_a_file_cannot_claim_to_be_the_operators_entry(nats: ManagedServer, tmp_path: Path) -> None:
    document = tenant_document()
    document["metadata"]["uid"] = "0b7c1a52-6f1e-4f63-9d0c-3c1f0c0ffee0"
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(document))
    result = zapflow(nats, "tenant", "apply", "-f", str(path))
    assert result.returncode == 1
    assert "metadata.uid is set by the operator" in result.stderr
    assert zapflow(nats, "tenant", "get", document["metadata"]["name"]).returncode == 1


def test_inline_secrets_are_refused_in_production(nats: ManagedServer, tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(tenant_document()))
    env = {
        **os.environ,
        "ZAPFLOW_NATS_URL": nats.url,
        "ZAPFLOW_ENVIRONMENT": "production",
        "ZAPFLOW_ADMIN_TOKEN": "x" * 32,
        "ZAPFLOW_PSEUDONYM_SECRET": "y" * 32,
    }
    result = run_zapflow(env, "tenant", "apply", "-f", str(path))
    assert result.returncode == 1
    assert "inline values are refused" in result.stderr


def test_unreachable_nats_is_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(tenant_document()))
    env = {**os.environ, "ZAPFLOW_NATS_URL": "nats://127.0.0.1:1"}
    result = run_zapflow(env, "tenant", "apply", "-f", str(path))
    assert result.returncode == 1
    assert "cannot reach NATS" in result.stderr
    assert "Traceback" not in result.stderr


def test_default_admin_token_is_refused_in_production(nats: ManagedServer) -> None:
    env = {**os.environ, "ZAPFLOW_NATS_URL": nats.url, "ZAPFLOW_ENVIRONMENT": "production"}
    env.pop("ZAPFLOW_ADMIN_TOKEN", None)
    result = run_zapflow(env, "tenant", "list")
    assert result.returncode == 1
    assert "ZAPFLOW_ADMIN_TOKEN" in result.stderr
