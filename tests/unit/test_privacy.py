"""Pseudonyms and phone numbers: the pure parts of privacy."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from zapflow.analytics.pseudonym import PSEUDONYM_HEX_CHARS, pseudonymise, tenant_key
from zapflow.platform.logging import redact_phone
from zapflow.privacy.erasure import ErasureError, normalise_phone


def test_a_pseudonym_is_stable_per_tenant_and_unrelated_across_tenants_and_secrets() -> None:
    acme = tenant_key("platform-secret", "acme")
    assert pseudonymise(acme, "5511987654321") == pseudonymise(tenant_key("platform-secret", "acme"), "5511987654321")
    assert pseudonymise(acme, "5511987654321") != pseudonymise(tenant_key("platform-secret", "globex"), "5511987654321")
    assert pseudonymise(acme, "5511987654321") != pseudonymise(tenant_key("other-secret", "acme"), "5511987654321")
    assert pseudonymise(acme, "5511987654321") != pseudonymise(acme, "5511987654322")
    assert len(pseudonymise(acme, "5511987654321")) == PSEUDONYM_HEX_CHARS
    assert "5511987654321" not in pseudonymise(acme, "5511987654321")


@pytest.mark.parametrize(
    ("written", "wa_id"),
    [("+55 (11) 98765-4321", "5511987654321"), ("5511987654321", "5511987654321"), ("+1.415.555.0100", "14155550100")],
)
def test_phone_numbers_are_taken_as_people_write_them(written: str, wa_id: str) -> None:
    assert normalise_phone(written) == wa_id


@pytest.mark.parametrize("written", ["", "12345", "+55 11 9876x-4321", "1234567890123456", "in.*.>"])
def test_anything_else_is_refused_with_a_reason(written: str) -> None:
    with pytest.raises(ErasureError, match="not a phone number"):
        normalise_phone(written)


def test_a_logged_phone_number_cannot_be_found_by_hashing_candidate_numbers() -> None:
    phone = "5511987654321"
    redacted = redact_phone(phone)
    assert redacted == redact_phone(phone) != redact_phone("5511987654322")
    assert phone not in redacted
    # An unkeyed hash would be matched by hashing every possible number.
    assert redacted.removeprefix("wa:") not in hashlib.sha256(phone.encode()).hexdigest()
    # The key lives and dies with the process: another one redacts the same number differently.
    other_process = subprocess.run(
        [sys.executable, "-c", f"from zapflow.platform.logging import redact_phone; print(redact_phone({phone!r}))"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert other_process.stdout.strip() != redacted
    assert redact_phone(phone, debug=True) == phone
