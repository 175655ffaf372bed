"""What the store and the conversation service both make of an inbound message, and that the store
can use it without importing a service."""

from __future__ import annotations

import subprocess
import sys

import pytest

from zapflow.v1 import inbound_pb2 as pb
from zapflow.whatsapp.messages import CHAT_EVENT_TYPES, describe, message_text

VOICE_NOTE = pb.InboundMessage(type="audio", media=pb.Media(kind="audio", voice=True))
PHOTO = pb.InboundMessage(type="image", media=pb.Media(kind="image", caption="my bike"))
PLACE = pb.InboundMessage(
    type="location", location=pb.Location(latitude=-23.5, longitude=-46.6, name="Shop", address="Main St 1")
)
TAP = pb.InboundMessage(type="interactive", interactive=pb.InteractiveReply(kind="button_reply", id="y", title="Yes"))
ORDER = pb.InboundMessage(
    type="order", order=pb.Order(text="for today", items=[pb.OrderItem(product_retailer_id="sku-1", quantity=2)])
)


@pytest.mark.parametrize(
    ("message", "rendered"),
    [
        (pb.InboundMessage(type="text", text=pb.Text(body="hello")), "hello"),
        (VOICE_NOTE, "[voice note]"),
        (PHOTO, "[image: my bike]"),
        (PLACE, "[location Shop Main St 1 (-23.50000, -46.60000)]"),
        (TAP, "[tapped: Yes]"),
        (pb.InboundMessage(type="reaction", reaction=pb.Reaction(emoji="👍")), "[reacted 👍]"),
        (ORDER, "[order: 2x sku-1] for today"),
        (pb.InboundMessage(type="system", system=pb.SystemNotice(kind="user_changed_number")), "[system message]"),
    ],
)
def test_describe_renders_every_type_on_one_line(message: pb.InboundMessage, rendered: str) -> None:
    assert describe(message) == rendered


@pytest.mark.parametrize(
    ("message", "words"),
    [(PHOTO, "my bike"), (PLACE, "Shop Main St 1"), (TAP, "Yes"), (ORDER, "for today"), (VOICE_NOTE, "")],
)
def test_message_text_is_what_the_customer_wrote(message: pb.InboundMessage, words: str) -> None:
    assert message_text(message) == words


def test_every_chat_event_type_is_a_kind_of_inbound_content() -> None:
    kinds = {field.name for field in pb.InboundMessage.DESCRIPTOR.oneofs_by_name["content"].fields}
    assert set(CHAT_EVENT_TYPES) <= kinds


def test_the_store_imports_no_service() -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, zapflow.store.repository; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    services = ("zapflow.conversation", "zapflow.gateway", "zapflow.recorder", "zapflow.scheduler")
    assert [name for name in services if f"'{name}" in loaded] == []
