"""The BotTenant document: validation, schema, secrets."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.support.tenants import tenant_document
from zapflow.tenants.model import (
    SecretRef,
    SecretUnavailable,
    TenantError,
    load_tenant_documents,
    parse_tenant,
    resolve_secret,
    tenant_json_schema,
)

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "bottenant.schema.json"


def test_committed_schema_matches_the_model() -> None:
    committed = json.loads(SCHEMA_FILE.read_text())
    assert committed == tenant_json_schema(), "run: uv run zapflow tenant schema > schemas/bottenant.schema.json"


def test_schema_has_a_description_on_every_spec_field() -> None:
    def walk(node: dict[str, object], path: str) -> list[str]:
        missing = []
        for name, child in (node.get("properties") or {}).items():  # type: ignore[attr-defined]
            if "description" not in child:
                missing.append(f"{path}.{name}")
            missing += walk(child, f"{path}.{name}")
            if isinstance(child.get("items"), dict):
                missing += walk(child["items"], f"{path}.{name}[]")
        return missing

    assert walk(tenant_json_schema()["properties"]["spec"], "spec") == []


def test_schema_accepts_what_the_model_accepts_and_refuses_the_rest() -> None:
    schema = tenant_json_schema()
    document = tenant_document()
    jsonschema.validate(document, schema)
    document["spec"]["whatsapp"]["phoneNumberId"] = "not-a-number"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["spec"]["whatsapp"].pop("phoneNumberId"), "spec.whatsapp.phoneNumberId"),
        (lambda d: d["spec"]["whatsapp"].update(appSecret={}), "spec.whatsapp.appSecret"),
        (lambda d: d["spec"]["bot"]["rules"][0]["match"].update(regex="(unclosed"), "spec.bot.rules[0].match"),
        (lambda d: d["spec"]["bot"]["rules"][1]["reply"]["buttons"][0].update(title="x" * 21), "title"),
        (lambda d: d["spec"].update(rateLimits={"messagesPerSecond": 5000}), "spec.rateLimits.messagesPerSecond"),
        (lambda d: d["metadata"].update(name="Not_Valid"), "metadata.name"),
        (lambda d: d.update(kind="Deployment"), "kind"),
        (lambda d: d["spec"].update(unknownField=1), "spec.unknownField"),
    ],
)
def test_a_broken_tenant_names_the_broken_field(mutate: object, field: str) -> None:
    document = tenant_document()
    mutate(document)  # type: ignore[operator]
    with pytest.raises(TenantError) as caught:
        parse_tenant(document)
    assert field in str(caught.value)


def test_yaml_file_with_several_documents(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump_all([tenant_document(), tenant_document()]))
    assert len(load_tenant_documents(path)) == 2
    path.write_text("apiVersion: [unclosed")
    with pytest.raises(TenantError, match="not valid YAML"):
        load_tenant_documents(path)


def test_redacted_document_masks_inline_secrets() -> None:
    tenant = parse_tenant(tenant_document())
    text = json.dumps(tenant.redacted())
    assert tenant.spec.whatsapp.app_secret.value not in text
    assert "***" in text


def test_secrets_resolve_from_value_env_and_mounted_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZF_TEST_TOKEN", "from-env")
    (tmp_path / "wa-creds").mkdir()
    (tmp_path / "wa-creds" / "token").write_text("from-secret\n")
    assert resolve_secret(SecretRef(value="inline"), tmp_path) == "inline"
    assert resolve_secret(SecretRef(env="ZF_TEST_TOKEN"), tmp_path) == "from-env"
    ref = SecretRef.model_validate({"secretKeyRef": {"name": "wa-creds", "key": "token"}})
    assert resolve_secret(ref, tmp_path) == "from-secret"
    with pytest.raises(SecretUnavailable, match="refused outside development"):
        resolve_secret(SecretRef(value="inline"), tmp_path, allow_inline=False)
    with pytest.raises(SecretUnavailable, match="ZF_MISSING"):
        resolve_secret(SecretRef(env="ZF_MISSING"), tmp_path)
