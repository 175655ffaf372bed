"""The desk's pure parts: how a notification shows a phone number, and a queued conversation's 24-hour window."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from zapflow.handoff.desk import Summary, mask_phone

REQUESTED = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("contact", "shown"),
    [
        pytest.param("5511987654321", "+55…4321", id="brazil"),
        pytest.param("14155550123", "+14…0123", id="us"),
        pytest.param("1234567", "+12…4567", id="shortest-shown"),
        pytest.param("123456", "+…", id="too-short-to-show-any-digit"),
        pytest.param("", "+…", id="empty"),
    ],
)
def test_a_notification_shows_the_country_and_the_last_four_digits_only(contact: str, shown: str) -> None:
    assert mask_phone(contact) == shown


def summary(last_customer_at: datetime | None) -> Summary:
    return Summary(
        id=1,
        tenant="acme",
        contact="5511987654321",
        request_id="turn-1",
        customer_name=None,
        status="waiting",
        reason="customer_asked",
        detail="atendente",
        priority=1,
        agent=None,
        labels=[],
        requested_at=REQUESTED,
        assigned_at=None,
        first_reply_at=None,
        resolved_at=None,
        resolution=None,
        resolved_by=None,
        last_customer_at=last_customer_at,
        last_activity_at=REQUESTED,
    )


def test_the_window_is_open_for_24_hours_after_the_customer_s_last_message() -> None:
    queued = summary(REQUESTED)
    assert queued.window_open(REQUESTED + timedelta(hours=23, minutes=59))
    assert not queued.window_open(REQUESTED + timedelta(hours=24))
    # Asked for by an agent before the customer ever wrote: only a template can reach them.
    assert not replace(queued, last_customer_at=None).window_open(REQUESTED)


def test_a_summary_as_json_has_its_times_in_iso_format() -> None:
    shown = summary(REQUESTED).as_json()
    assert (shown["requested_at"], shown["window_closes_at"], shown["assigned_at"]) == (
        "2026-03-02T15:00:00+00:00",
        "2026-03-03T15:00:00+00:00",
        None,
    )
