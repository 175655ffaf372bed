"""The BotTenant document: validation, schema, secrets and how long a read secret is kept."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.support.tenants import tenant_document
from zapflow.tenants.files import TenantError, load_tenant_documents, parse_tenant
from zapflow.tenants.model import BotTenant
from zapflow.tenants.schema import tenant_json_schema
from zapflow.tenants.secrets import SecretRef, SecretUnavailable, resolve_secret

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


def mounted_secret_tenant(secrets_dir: Path, value: str) -> BotTenant:
    """A tenant whose app secret is the key `app` of the Secret `wa`, mounted with this value."""
    (secrets_dir / "wa").mkdir(parents=True, exist_ok=True)
    (secrets_dir / "wa" / "app").write_text(value + "\n")
    document = tenant_document()
    document["spec"]["whatsapp"]["appSecret"] = {"secretKeyRef": {"name": "wa", "key": "app"}}
    return parse_tenant(document)


def test_a_mounted_secret_is_read_once_per_tenant_revision(tmp_path: Path) -> None:
    tenant = mounted_secret_tenant(tmp_path, "before-rotation")
    ref = tenant.spec.whatsapp.app_secret
    assert tenant.secrets.resolve(ref, tmp_path, allow_inline=False) == "before-rotation"

    (tmp_path / "wa" / "app").write_text("after-rotation\n")

    assert tenant.secrets.resolve(ref, tmp_path, allow_inline=False) == "before-rotation"
    # The registry parses every revision into a new BotTenant: the next revision reads the file.
    next_revision = parse_tenant(tenant.document())
    assert next_revision.secrets.resolve(next_revision.spec.whatsapp.app_secret, tmp_path, False) == "after-rotation"


def test_an_env_secret_is_kept_for_the_revision_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZF_TEST_TOKEN", "first")
    tenant = parse_tenant(tenant_document())
    ref = SecretRef(env="ZF_TEST_TOKEN")
    assert tenant.secrets.resolve(ref, tmp_path, allow_inline=False) == "first"
    monkeypatch.setenv("ZF_TEST_TOKEN", "second")
    assert tenant.secrets.resolve(ref, tmp_path, allow_inline=False) == "first"


def test_a_missing_secret_is_not_kept_and_is_read_once_it_appears(tmp_path: Path) -> None:
    tenant = mounted_secret_tenant(tmp_path, "unused")
    ref = SecretRef.model_validate({"secretKeyRef": {"name": "late", "key": "token"}})
    with pytest.raises(SecretUnavailable, match="secret late/token"):
        tenant.secrets.resolve(ref, tmp_path, allow_inline=False)

    (tmp_path / "late").mkdir()
    (tmp_path / "late" / "token").write_text("mounted-late\n")

    assert tenant.secrets.resolve(ref, tmp_path, allow_inline=False) == "mounted-late"


def test_an_inline_secret_is_refused_outside_development_on_every_use(tmp_path: Path) -> None:
    tenant = parse_tenant(tenant_document())
    ref = tenant.spec.whatsapp.app_secret
    assert tenant.secrets.resolve(ref, tmp_path, allow_inline=True) == ref.value
    with pytest.raises(SecretUnavailable, match="refused outside development"):
        tenant.secrets.resolve(ref, tmp_path, allow_inline=False)


def test_read_secrets_change_neither_the_document_nor_equality(tmp_path: Path) -> None:
    tenant = mounted_secret_tenant(tmp_path, "s3cret")
    untouched = parse_tenant(tenant.document())
    tenant.secrets.resolve(tenant.spec.whatsapp.app_secret, tmp_path, allow_inline=False)
    assert tenant == untouched
    assert "s3cret" not in json.dumps(tenant.document())
