"""Where the sandbox's numbers come from: tenant files, runtime registration; and its settings."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml
from pydantic import ValidationError

from tests.sandbox.helpers import NOWHERE, customer_writes, messages_url, text_message
from tests.support.http import serve
from zapflow.platform.service import create_app
from zapflow.platform.settings import CoreSettings
from zapflow.sandbox.app import sandbox_service
from zapflow.sandbox.numbers import NumberConflict
from zapflow.sandbox.settings import SandboxSettings
from zapflow.tenants.files import TenantError
from zapflow.tenants.secrets import SecretUnavailable


def tenant_yaml(name: str, number: str, access_token: dict[str, object]) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "zapflow.io/v1alpha1",
            "kind": "BotTenant",
            "metadata": {"name": name},
            "spec": {
                "whatsapp": {
                    "phoneNumberId": number,
                    "appSecret": {"value": f"secret-{name}"},
                    "accessToken": access_token,
                    "verifyToken": {"value": "verify"},
                }
            },
        }
    )


async def test_numbers_are_learned_from_tenant_files_with_their_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOX_TEST_TOKEN", "token-from-env")
    (tmp_path / "secrets" / "bakery").mkdir(parents=True)
    (tmp_path / "secrets" / "bakery" / "token").write_text("token-from-secret\n")
    inline = tmp_path / "shop.yaml"
    inline.write_text(
        tenant_yaml("shop", "301", {"value": "token-inline"})
        + "---\n"
        + tenant_yaml("cafe", "302", {"env": "SANDBOX_TEST_TOKEN"})
    )
    folder = tmp_path / "more"
    folder.mkdir()
    (folder / "bakery.yml").write_text(
        tenant_yaml("bakery", "303", {"secretKeyRef": {"name": "bakery", "key": "token"}})
    )
    (folder / "notes.txt").write_text("not a tenant")
    settings = SandboxSettings(
        webhook_url=NOWHERE,
        statuses="off",
        tenant_files=[inline, folder],
        core=CoreSettings(secrets_dir=tmp_path / "secrets"),
    )

    async with serve(create_app(sandbox_service(settings), settings)) as url, httpx.AsyncClient(base_url=url) as client:
        listed = (await client.get("/sandbox/numbers")).json()["numbers"]
        for number in ("301", "302", "303"):
            await customer_writes(client, number=number)
        sends = {
            number: await client.post(
                messages_url(number), json=text_message(), headers={"Authorization": f"Bearer {token}"}
            )
            for number, token in [("301", "token-inline"), ("302", "token-from-env"), ("303", "token-from-secret")]
        }

    assert [(n["tenant"], n["phone_number_id"]) for n in listed] == [
        ("bakery", "303"),
        ("cafe", "302"),
        ("shop", "301"),
    ]
    assert {number: answer.status_code for number, answer in sends.items()} == {"301": 200, "302": 200, "303": 200}


def test_an_invalid_tenant_file_fails_at_creation_naming_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(tenant_yaml("shop", "not-digits", {"value": "t"}))

    with pytest.raises(TenantError, match=r"broken\.yaml"):
        sandbox_service(SandboxSettings(tenant_files=[broken]))


def test_a_secret_that_cannot_be_resolved_fails_at_creation(tmp_path: Path) -> None:
    tenant = tmp_path / "shop.yaml"
    tenant.write_text(tenant_yaml("shop", "301", {"env": "SANDBOX_TEST_UNSET_VARIABLE"}))

    with pytest.raises(SecretUnavailable, match="SANDBOX_TEST_UNSET_VARIABLE"):
        sandbox_service(SandboxSettings(tenant_files=[tenant]))


def test_two_tenants_cannot_claim_one_number(tmp_path: Path) -> None:
    tenants = tmp_path / "tenants.yaml"
    shop, cafe = tenant_yaml("shop", "301", {"value": "a"}), tenant_yaml("cafe", "301", {"value": "b"})
    tenants.write_text(f"{shop}---\n{cafe}")

    with pytest.raises(NumberConflict, match="301"):
        sandbox_service(SandboxSettings(tenant_files=[tenants]))


async def test_registration_updates_its_own_number_and_refuses_anothers(sandbox: httpx.AsyncClient) -> None:
    number = {"tenant": "shop", "phone_number_id": "401", "access_token": "token-1", "app_secret": "very-secret"}

    created = await sandbox.post("/sandbox/numbers", json=number)
    updated = await sandbox.post("/sandbox/numbers", json={**number, "access_token": "token-2", "display_name": "Shop"})
    stolen = await sandbox.post("/sandbox/numbers", json={**number, "tenant": "thief"})
    await customer_writes(sandbox, number="401")
    old_token, new_token = [
        await sandbox.post(messages_url("401"), json=text_message(), headers={"Authorization": f"Bearer {token}"})
        for token in ("token-1", "token-2")
    ]

    assert (created.status_code, updated.status_code, stolen.status_code) == (201, 200, 409)
    assert "shop" in stolen.json()["detail"]
    assert updated.json()["number"]["display_name"] == "Shop"
    assert (old_token.status_code, new_token.status_code) == (401, 200)


async def test_the_number_list_never_shows_credentials(sandbox: httpx.AsyncClient) -> None:
    await sandbox.post(
        "/sandbox/numbers",
        json={"tenant": "shop", "phone_number_id": "401", "access_token": "token-xyz", "app_secret": "secret-xyz"},
    )
    listed = await sandbox.get("/sandbox/numbers")

    assert "xyz" not in listed.text
    shop = next(n for n in listed.json()["numbers"] if n["tenant"] == "shop")
    assert set(shop) == {"tenant", "phone_number_id", "display_name", "display_phone_number", "waba_id"}
    assert shop["display_phone_number"].isdigit() and shop["waba_id"].isdigit()


@pytest.mark.parametrize(
    "body",
    [
        {"tenant": "Shop!", "phone_number_id": "1", "access_token": "t", "app_secret": "s"},
        {"tenant": "shop", "phone_number_id": "12ab", "access_token": "t", "app_secret": "s"},
        {"tenant": "shop", "phone_number_id": "1", "access_token": "", "app_secret": "s"},
        {"tenant": "shop", "phone_number_id": "1", "access_token": "t"},
    ],
    ids=["tenant-name", "number", "empty-token", "no-secret"],
)
async def test_a_bad_registration_is_a_clear_422(shared_sandbox: httpx.AsyncClient, body: dict[str, str]) -> None:
    answer = await shared_sandbox.post("/sandbox/numbers", json=body)
    assert answer.status_code == 422
    assert answer.json()["detail"]


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZAPFLOW_SANDBOX_TENANT_FILES", "a.yaml, tenants/ ,")
    monkeypatch.setenv("ZAPFLOW_SANDBOX_STATUSES", "delivered")
    monkeypatch.setenv("ZAPFLOW_SANDBOX_PORT", "8200")

    settings = SandboxSettings()

    assert settings.tenant_files == [Path("a.yaml"), Path("tenants")]
    assert (settings.statuses, settings.port, settings.host) == ("delivered", 8200, "127.0.0.1")


@pytest.mark.parametrize(
    ("field", "value"),
    [("statuses", "sometimes"), ("webhook_url", "ftp://gateway"), ("status_sent_delay", -1), ("port", 70000)],
)
def test_settings_refuse_nonsense(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        SandboxSettings(**{field: value})  # type: ignore[arg-type]
