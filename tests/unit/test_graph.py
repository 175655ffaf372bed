"""Graph API request bodies and how answers are classified."""

from __future__ import annotations

import json

import aiohttp
import pytest

from zapflow.gateway.graph import Outcome, classify, classify_transport_error, graph_payload
from zapflow.v1 import outbound_pb2 as pb


def test_text_with_quote() -> None:
    command = pb.OutboundCommand(contact="5511", reply_to_wamid="wamid.Q", text=pb.OutText(body="hi"))
    assert graph_payload(command) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "5511",
        "context": {"message_id": "wamid.Q"},
        "type": "text",
        "text": {"body": "hi", "preview_url": False},
    }


def test_buttons_list_template_and_read_receipt() -> None:
    buttons = graph_payload(
        pb.OutboundCommand(
            contact="1", interactive=pb.OutInteractive(body="b", buttons=[pb.Button(id="y", title="Yes")])
        )
    )
    assert buttons["interactive"]["action"]["buttons"] == [{"type": "reply", "reply": {"id": "y", "title": "Yes"}}]
    menu = pb.OutInteractive(
        body="b", list=pb.ListMenu(button="Open", sections=[pb.ListSection(rows=[pb.ListRow(id="r", title="R")])])
    )
    listed = graph_payload(pb.OutboundCommand(contact="1", interactive=menu))
    assert listed["interactive"]["type"] == "list"
    assert listed["interactive"]["action"]["sections"] == [{"rows": [{"id": "r", "title": "R"}]}]
    template = graph_payload(
        pb.OutboundCommand(
            contact="1", template=pb.OutTemplate(name="hello", language="pt_BR", body_parameters=["Ana"])
        )
    )
    assert template["template"]["components"][0]["parameters"] == [{"type": "text", "text": "Ana"}]
    read = graph_payload(pb.OutboundCommand(contact="1", mark_read=pb.MarkRead(wamid="wamid.R", typing=True)))
    assert read == {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": "wamid.R",
        "typing_indicator": {"type": "text"},
    }


def error(status: int, code: int) -> tuple[int, bytes]:
    return status, json.dumps({"error": {"message": "m", "type": "OAuthException", "code": code}}).encode()


@pytest.mark.parametrize(
    ("response", "outcome"),
    [
        ((200, b'{"messages": [{"id": "wamid.OK"}]}'), Outcome.SENT),
        ((502, b"<html>bad gateway</html>"), Outcome.RETRY),
        (error(429, 130429), Outcome.RETRY),
        (error(400, 131056), Outcome.RETRY),
        (error(500, 131000), Outcome.RETRY),
        (error(400, 131047), Outcome.WINDOW_CLOSED),
        (error(400, 100), Outcome.FAILED),
        (error(401, 190), Outcome.FAILED),
    ],
)
def test_answers_are_classified(response: tuple[int, bytes], outcome: Outcome) -> None:
    assert classify(*response).outcome is outcome


def test_retry_after_is_honoured() -> None:
    assert classify(429, b"{}", "7").retry_after_s == 7.0
    assert classify(200, b'{"messages": [{"id": "wamid.X"}]}').wamid == "wamid.X"


async def test_only_errors_before_sending_are_retried() -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError) as refused:
            await session.post("http://127.0.0.1:1/v21.0/1/messages", json={})  # nothing listens on port 1
    assert classify_transport_error(refused.value).outcome is Outcome.RETRY
    assert classify_transport_error(aiohttp.ConnectionTimeoutError()).outcome is Outcome.RETRY
    assert classify_transport_error(TimeoutError()).outcome is Outcome.UNCERTAIN
    assert classify_transport_error(aiohttp.ServerDisconnectedError()).outcome is Outcome.UNCERTAIN
