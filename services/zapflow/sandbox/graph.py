"""The Graph API's /messages endpoint: authorization, validation, faults, recording, side effects."""

from __future__ import annotations

import time
from typing import Any

from zapflow.platform.logging import get_logger, redact_phone
from zapflow.sandbox.chat import ChatEvent, ChatHub
from zapflow.sandbox.delivery import StatusLifecycle
from zapflow.sandbox.meta import (
    API_VERSION_PATTERN,
    GraphError,
    MarkReadRequest,
    SendMessageRequest,
    invalid_token,
    meta_error,
    new_wamid,
    parse_graph_request,
    read_graph_body,
    unknown_object,
    unknown_path,
)
from zapflow.sandbox.numbers import NumberDirectory, SandboxNumber
from zapflow.sandbox.recording import Attempt, FaultPlan, Recorder, SentMessage
from zapflow.sandbox.rules import SendingRules

log = get_logger(__name__)


def bearer_token(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class GraphEmulator:
    """Answers POST /{version}/{phone_number_id}/messages the way graph.facebook.com does."""

    def __init__(
        self,
        numbers: NumberDirectory,
        recorder: Recorder,
        faults: FaultPlan,
        rules: SendingRules,
        hub: ChatHub,
        statuses: StatusLifecycle,
        debug: bool,
    ) -> None:
        self._numbers = numbers
        self._recorder = recorder
        self._faults = faults
        self._rules = rules
        self._hub = hub
        self._statuses = statuses
        self._debug = debug

    def handle(
        self, api_version: str, phone_number_id: str, authorization: str | None, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """The HTTP status and JSON body of the answer; every call is recorded as an attempt."""
        payload, unreadable = read_graph_body(body)
        try:
            if not API_VERSION_PATTERN.match(api_version):
                raise unknown_path(f"/{api_version}/{phone_number_id}/messages")
            number = self._authorize(phone_number_id, authorization)
            if unreadable is not None:
                raise unreadable
            request = parse_graph_request(payload)
            if isinstance(request, MarkReadRequest):
                status, answer = 200, self._mark_read(number, request)
            else:
                status, answer = 200, self._send(number, request, payload)
        except GraphError as error:
            status, answer = error.http_status, error.body()
            log.info("graph call refused", phone_number_id=phone_number_id, status=status, code=error.code)
        self._recorder.record_attempt(
            Attempt(
                phone_number_id=phone_number_id,
                http_status=status,
                request=payload,
                response=answer,
                timestamp=time.time(),
            )
        )
        return status, answer

    def _authorize(self, phone_number_id: str, authorization: str | None) -> SandboxNumber:
        # Meta checks the token first (190), then whether it may act on this object (100/33):
        # another tenant's valid token gets the same answer as a number that does not exist.
        token = bearer_token(authorization)
        if token is None or not self._numbers.token_is_known(token):
            raise invalid_token()
        number = self._numbers.get(phone_number_id)
        if number is None or not number.token_matches(token):
            raise unknown_object(phone_number_id)
        return number

    def _send(self, number: SandboxNumber, request: SendMessageRequest, payload: dict[str, Any]) -> dict[str, Any]:
        # Faults apply to valid sends only, so a test's "next N sends fail" counts real sends.
        fault = self._faults.take(number.phone_number_id)
        if fault is not None:
            raise meta_error(fault)
        self._rules.check(number.phone_number_id, request)
        message = SentMessage(
            wamid=new_wamid(),
            tenant=number.tenant,
            phone_number_id=number.phone_number_id,
            to=request.wa_id,
            type=request.type,
            payload=payload,
            timestamp=time.time(),
        )
        self._recorder.record_message(message)
        self._hub.publish((number.phone_number_id, message.to), ChatEvent("message", message.as_dict()))
        self._statuses.start(number, message, request.biz_opaque_callback_data)
        log.info(
            "message accepted",
            tenant=number.tenant,
            recipient=redact_phone(message.to, self._debug),
            type=message.type,
            wamid=message.wamid,
        )
        sent: dict[str, Any] = {"id": message.wamid}
        if request.type == "template":
            sent["message_status"] = "accepted"
        return {
            "messaging_product": "whatsapp",
            "contacts": [{"input": request.to, "wa_id": message.to}],
            "messages": [sent],
        }

    def _mark_read(self, number: SandboxNumber, request: MarkReadRequest) -> dict[str, Any]:
        # An id the sandbox did not deliver (a raw payload without it, a restart) is still
        # accepted, so the gateway's flow never depends on the sandbox's memory; only a
        # message it delivered can show its read receipt in a chat page.
        origin = self._recorder.inbound_origin(request.message_id)
        if origin is not None and origin.phone_number_id == number.phone_number_id:
            data = {"message_id": request.message_id}
            self._hub.publish((origin.phone_number_id, origin.wa_id), ChatEvent("read", data))
            if request.typing_indicator is not None:
                self._hub.publish((origin.phone_number_id, origin.wa_id), ChatEvent("typing", data))
        log.info("marked as read", tenant=number.tenant, typing=request.typing_indicator is not None)
        return {"success": True}
