"""The status logic: Ready from its parts, conditions merged with their transition times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from zapflow.operator.status import (
    KNOWLEDGE_SYNCED,
    READY,
    REGISTRY_SYNCED,
    SECRETS_RESOLVED,
    WORKLOAD_SYNCED,
    Condition,
    invalid_spec,
    merge,
    ready,
    status_patch,
    synced_before,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
SECRETS_OK = Condition(SECRETS_RESOLVED, True, "Found", "every referenced Secret key exists")
SYNCED = Condition(REGISTRY_SYNCED, True, "Written", "the registry holds this spec")
SHARED = Condition(WORKLOAD_SYNCED, True, "Shared", "the shared conversation workload answers this tenant")
NO_KNOWLEDGE = Condition(KNOWLEDGE_SYNCED, True, "NoConfigMaps", "the spec names no knowledge ConfigMaps")


def test_ready_when_every_part_is_true() -> None:
    every = [SECRETS_OK, SYNCED, SHARED, NO_KNOWLEDGE]
    assert ready(every) == Condition(READY, True, "Synced", "the services serve this tenant")


def test_not_ready_takes_the_reason_and_message_of_the_first_failing_part() -> None:
    missing = Condition(
        SECRETS_RESOLVED, False, "SecretMissing", "spec.whatsapp.appSecret: Secret shop/x does not exist"
    )
    taken = Condition(REGISTRY_SYNCED, False, "PhoneNumberTaken", "already belongs to tenant other")

    assert ready([missing, taken]) == Condition(READY, False, missing.reason, missing.message)
    assert ready([SECRETS_OK, taken]) == Condition(READY, False, taken.reason, taken.message)


def test_a_part_not_checked_yet_is_not_ready() -> None:
    assert ready([SECRETS_OK]) == Condition(READY, False, "Pending", f"{REGISTRY_SYNCED} has not been checked yet")


def test_the_transition_time_is_kept_while_the_status_stays_the_same() -> None:
    first = merge([], [SECRETS_OK], T0)
    again = merge(first, [Condition(SECRETS_RESOLVED, True, "Found", "a new message")], T1)

    assert again[0]["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    assert again[0]["message"] == "a new message"


def test_the_transition_time_moves_when_the_status_changes() -> None:
    first = merge([], [SECRETS_OK], T0)
    flipped = merge(first, [Condition(SECRETS_RESOLVED, False, "SecretMissing", "gone")], T1)

    assert flipped[0] == {
        "type": SECRETS_RESOLVED,
        "status": "False",
        "reason": "SecretMissing",
        "message": "gone",
        "lastTransitionTime": "2026-01-01T12:05:00Z",
    }


def test_conditions_not_checked_again_are_kept_and_ready_comes_first() -> None:
    before = merge([], [SECRETS_OK, SYNCED, ready([SECRETS_OK, SYNCED])], T0)
    after = merge(before, invalid_spec("spec.whatsapp.phoneNumberId: String should match pattern"), T1)

    assert [c["type"] for c in after] == [READY, SECRETS_RESOLVED, REGISTRY_SYNCED]
    assert after[0]["reason"] == "InvalidSpec"
    assert "spec.whatsapp.phoneNumberId" in after[0]["message"]
    assert after[2] == before[2]


def test_the_status_patch_records_the_generation_it_observed() -> None:
    patch = status_patch({}, [SECRETS_OK, SYNCED], 3, T0)

    assert patch["observedGeneration"] == 3
    assert [c["type"] for c in patch["conditions"]] == [SECRETS_RESOLVED, REGISTRY_SYNCED]
    assert "observedGeneration" not in status_patch({}, [SECRETS_OK], None, T0)


def test_drift_is_repaired_only_for_a_tenant_once_written() -> None:
    assert not synced_before({})
    assert not synced_before({"conditions": merge([], [Condition(REGISTRY_SYNCED, False, "X", "y")], T0)})
    assert synced_before({"conditions": merge([], [SYNCED], T0)})
