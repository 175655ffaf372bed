"""The benchmark's own bookkeeping: percentiles, loss/duplicate accounting, the lean HTTP client."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from bench import accounting, loadgen
from bench.accounting import SendRecord, TurnRecord
from zapflow.whatsapp.signature import signature_matches


def turn(turn_id: str, *wamids: str, closed: float = 10.0, answered: float = 10.02) -> TurnRecord:
    return TurnRecord(turn_id, tuple(wamids), (), closed - 0.3, closed, answered)


def send(quoted: str | None, at: float = 10.05) -> SendRecord:
    return SendRecord("5511900000000", quoted, at)


def test_percentile_is_nearest_rank() -> None:
    values = sorted(float(v) for v in range(1, 101))
    assert accounting.percentile(values, 50) == 50
    assert accounting.percentile(values, 99) == 99
    assert accounting.percentile(values, 100) == 100
    assert accounting.percentile(values, 0) == 1
    assert accounting.percentile([7.0], 99.9) == 7
    assert math.isnan(accounting.percentile([], 50))


def test_summarise_in_milliseconds() -> None:
    summary = accounting.summarise([0.001, 0.002, 0.003, 0.004])
    assert summary["count"] == 4
    assert summary["p50_ms"] == 2.0
    assert summary["max_ms"] == 4.0
    assert summary["mean_ms"] == 2.5
    assert accounting.summarise([])["p99_ms"] is None


def test_account_all_good() -> None:
    turns = [turn("t1", "w1", "w2"), turn("t2", "w3")]
    result = accounting.account(["w1", "w2", "w3"], turns, [send("w2"), send("w3")])
    assert result.ok
    assert result.lost == result.duplicates == 0
    assert result.messages_per_turn == {2: 1, 1: 1}
    assert set(result.send_of_turn) == {"t1", "t2"}


def test_account_finds_loss_and_duplicates() -> None:
    turns = [turn("t1", "w1"), turn("t2", "w1", "w2"), turn("t3", "w4")]
    sends = [send("w1"), send("w2"), send("w2"), send("nobody"), send(None)]
    result = accounting.account(["w1", "w2", "w3", "w4"], turns, sends)
    assert not result.ok
    assert result.missing == ["w3"]
    assert result.in_several_turns == ["w1"]
    assert result.turns_sent_twice == ["t2"]
    assert result.turns_without_send == ["t3"]
    assert result.unexplained_sends == 2
    assert result.lost == 1
    assert result.duplicates == 1 + 1 + 2


def test_account_tolerates_webhooks_that_failed_but_were_stored() -> None:
    # A webhook answered 5xx may still be in JetStream (Meta would retry it): finding it in a
    # turn is fine, not finding it is not a loss.
    turns = [turn("t1", "w1"), turn("t2", "w9")]
    result = accounting.account(["w1"], turns, [send("w1"), send("w9")], maybe_stored=["w9", "w10"])
    assert result.ok
    assert accounting.account(["w1"], turns, [send("w1"), send("w9")]).unknown_in_turns == ["w9"]


def test_presigned_request_verifies_with_zapflow() -> None:
    body = loadgen.webhook_body("900000000000001", "5511900000001", "wamid.X1", "hello", 1_700_000_000)
    raw = loadgen.http_post("127.0.0.1", 8000, "/webhook/whatsapp", body, "app-secret")
    head, _, sent_body = raw.partition(b"\r\n\r\n")
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
    assert sent_body == body
    assert int(headers["Content-Length"]) == len(body)
    assert signature_matches(body, headers["X-Hub-Signature-256"], "app-secret")
    message = json.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]
    assert message["id"] == "wamid.X1"
    assert message["from"] == "5511900000001"


@pytest.mark.parametrize("chunked", [False, True])
async def test_lean_client_reads_keep_alive_answers(chunked: bool) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):  # two requests on one connection
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(
                next(v for k, v in (h.split(b": ") for h in head.split(b"\r\n")[1:-2]) if k == b"Content-Length")
            )
            await reader.readexactly(length)
            if chunked:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\n\r\nbusy!")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        connection = loadgen.Connection("127.0.0.1", port)
        await connection.open()
        request = loadgen.http_post("127.0.0.1", port, "/x", b"{}", "s")
        for _ in range(2):
            status, body = await connection.request(request)
            assert (status, body) == ((200, b"abcde") if chunked else (503, b"busy!"))
        with pytest.raises(loadgen.HttpError):
            await connection.request(request)  # the server closed the connection
        connection.close()
    finally:
        server.close()
        await server.wait_closed()
