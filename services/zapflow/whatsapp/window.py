"""WhatsApp's customer-service window: free-form messages only within 24 hours of the customer's last one.

Outside it, only an approved template may start a conversation (Meta refuses anything else with
131047). The window is measured from the message's own timestamp, when the customer sent it, not
from when its webhook arrived: Meta may deliver a webhook hours late.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from zapflow.v1 import outbound_pb2 as pb

SERVICE_WINDOW = timedelta(hours=24)
# What an outbound command may be without the window: templates, and marking a message read.
OUTSIDE_WINDOW_BODIES = frozenset({"template", "mark_read"})


def closes_at(last_customer_message: datetime | None) -> datetime | None:
    """When the customer's 24-hour window closes (None: they never wrote, it is closed)."""
    return last_customer_message + SERVICE_WINDOW if last_customer_message is not None else None


def is_open(last_customer_message: datetime | None, now: datetime) -> bool:
    closes = closes_at(last_customer_message)
    return closes is not None and now < closes


def needs_window(command: pb.OutboundCommand) -> bool:
    """Whether Meta would refuse this command outside the window."""
    return command.WhichOneof("body") not in OUTSIDE_WINDOW_BODIES


def command_window_closes_at(command: pb.OutboundCommand, last_customer_epoch: float | None) -> datetime | None:
    """The later of what the command's producer knew and what Redis knows now (the customer may have written since)."""
    known = [command.window_closes_at.ToDatetime(UTC)] if command.HasField("window_closes_at") else []
    if last_customer_epoch is not None:
        known.append(datetime.fromtimestamp(last_customer_epoch, UTC) + SERVICE_WINDOW)
    return max(known, default=None)
