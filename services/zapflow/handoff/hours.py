"""Business hours, and what the customer is told when a person is asked for."""

from __future__ import annotations

import math
from datetime import datetime
from zoneinfo import ZoneInfo

from zapflow.tenants.model import WEEKDAYS, BusinessHoursSpec, HandoffSpec


def is_open(hours: BusinessHoursSpec, at: datetime) -> bool:
    """Agents work at this moment (no hours declared: always)."""
    if not hours.hours:
        return True
    local = at.astimezone(ZoneInfo(hours.timezone))
    day, clock = WEEKDAYS[local.weekday()], local.strftime("%H:%M")
    return any(day in span.days and span.opens <= clock < span.closes for span in hours.hours)


def notice_text(spec: HandoffSpec, now: datetime, agents_online: int, expected_wait_s: float | None) -> str:
    """What the customer is told as the conversation goes to the queue."""
    if not is_open(spec.business_hours, now):
        return spec.closed_notice
    if agents_online and expected_wait_s is not None and spec.wait_notice:
        minutes = max(1, math.ceil(expected_wait_s / 60))
        return f"{spec.notice} {spec.wait_notice.replace('{minutes}', str(minutes))}"
    return spec.notice
