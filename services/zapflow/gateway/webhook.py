"""The WhatsApp webhook: verification handshake and signed notifications.

What a signed POST gets (docs/webhook.md has the reasoning):
- unsigned, badly signed, or naming a number no tenant owns: 401/403, nothing kept;
- larger than the limit: 413;
- signed by the tenant: 200 once every readable message and status is in JetStream and every
  part that cannot be read (a malformed message, or the whole body) is in the dead-letter
  stream with its reason and raw bytes. Meta retries any other answer for seven days, and a part
  that cannot be read never will be, so refusing it would only delay its neighbours;
- JetStream really unavailable: 503, and Meta's retry is deduplicated.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse
from google.protobuf.message import Message
from nats.errors import BadSubjectError, MaxPayloadError
from nats.js import api
from nats.js.errors import BadRequestError
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from zapflow.gateway.runtime import CurrentRuntime, GatewayRuntime
from zapflow.platform import bus, catalogue, metrics
from zapflow.platform.http import read_bounded_body
from zapflow.platform.logging import get_logger
from zapflow.tenants.model import BotTenant
from zapflow.tenants.secrets import SecretUnavailable
from zapflow.v1 import inbound_pb2, turn_pb2
from zapflow.whatsapp import payload
from zapflow.whatsapp.bounded import load_bounded
from zapflow.whatsapp.signature import signature_matches
from zapflow.whatsapp.webhook import ParsedWebhook, PayloadError, Refused, parse_webhook, phone_number_ids_hint

log = get_logger(__name__)
router = APIRouter(prefix="/webhook", tags=["webhook"])
tracer = trace.get_tracer(__name__)

# Publishes one webhook has in flight at once (a documented payload has far fewer).
PUBLISH_WAVE = 64
# What the bus refuses about one event (not about the bus): that event is dead-lettered instead.
EVENT_REFUSED = (BadSubjectError, MaxPayloadError, BadRequestError)


def _secret(runtime: GatewayRuntime, tenant: BotTenant, which: str) -> str | None:
    core = runtime.settings.core
    try:
        return tenant.secrets.resolve(getattr(tenant.spec.whatsapp, which), core.secrets_dir, core.is_development)
    except SecretUnavailable as error:
        log.error("tenant secret unavailable", tenant=tenant.name, secret=which, error=str(error))
        return None


@router.get("/whatsapp", response_class=PlainTextResponse)
async def verify(
    runtime: CurrentRuntime,
    mode: Annotated[str, Query(alias="hub.mode", max_length=32)] = "",
    token: Annotated[str, Query(alias="hub.verify_token", max_length=256)] = "",
    challenge: Annotated[str, Query(alias="hub.challenge", max_length=256)] = "",
) -> str:
    """Meta's subscription handshake: echo the challenge when a tenant's verify token matches."""
    if mode != "subscribe" or not token or not challenge:
        raise HTTPException(status_code=400, detail="expected hub.mode=subscribe, hub.verify_token and hub.challenge")
    for tenant in runtime.connections.registry.all():
        expected = _secret(runtime, tenant, "verify_token")
        if expected is not None and hmac.compare_digest(token.encode(), expected.encode()):
            return challenge
    raise HTTPException(status_code=403, detail="verify token does not match any tenant")


def _refuse(status: int, outcome: str, reason: str, tenant: str = "unknown") -> HTTPException:
    metrics.WEBHOOK_REQUESTS.labels(tenant, outcome).inc()
    if outcome == "bad_signature":
        metrics.SIGNATURE_FAILURES.labels(tenant).inc()
    log.warning("webhook refused", outcome=outcome, tenant=tenant, reason=reason)
    return HTTPException(status_code=status, detail=reason)


def _verified_tenants(runtime: GatewayRuntime, body: bytes, signature: str | None) -> dict[str, BotTenant]:
    """Tenants named by the body whose app secret produced the signature (checked before parsing)."""
    candidates = {
        number: tenant
        for number in phone_number_ids_hint(body)
        if (tenant := runtime.connections.registry.by_phone_number_id(number)) is not None
    }
    if not candidates:
        raise _refuse(403, "unknown_tenant", "no known tenant owns the payload's phone_number_id")
    label = next(iter(candidates.values())).name
    if not signature:
        raise _refuse(401, "bad_signature", "X-Hub-Signature-256 header is missing", label)
    verified: dict[str, BotTenant] = {}
    checked: dict[str, bool] = {}
    for number, tenant in candidates.items():
        secret = _secret(runtime, tenant, "app_secret")
        if secret is None:
            continue
        if secret not in checked:
            checked[secret] = signature_matches(body, signature, secret)
        if checked[secret]:
            verified[number] = tenant
    if not verified:
        raise _refuse(403, "bad_signature", "X-Hub-Signature-256 does not match the tenant's app secret", label)
    return verified


@router.post("/whatsapp")
async def receive(
    request: Request,
    runtime: CurrentRuntime,
    signature: Annotated[str | None, Header(alias="X-Hub-Signature-256")] = None,
) -> dict[str, object]:
    """A signed notification from Meta: published to JetStream before it is acknowledged."""
    # The root of the customer message's trace: its context travels on in the NATS headers.
    with tracer.start_as_current_span("POST /webhook/whatsapp", kind=SpanKind.SERVER):
        return await _accept(request, runtime, signature)


async def _accept(request: Request, runtime: GatewayRuntime, signature: str | None) -> dict[str, object]:
    started = time.perf_counter()
    limit = runtime.settings.max_body_bytes
    body = await read_bounded_body(request, limit, f"body larger than {limit} bytes")
    tenants = _verified_tenants(runtime, body, signature)
    signer = next(iter(tenants.values())).name
    try:
        parsed = parse_webhook(load_bounded(body, runtime.settings.json_limits), time.time())
    except PayloadError as error:
        parsed = ParsedWebhook(refused=[Refused("body", str(error), body)])
    unverified = parsed.phone_number_ids - tenants.keys()
    if unverified:
        raise _refuse(403, "bad_signature", "the payload names a number the signature does not cover", signer)
    _count_unknown(parsed, signer)

    received_at = bus.now_timestamp()
    events: list[tuple[str, inbound_pb2.InboundMessage | inbound_pb2.StatusUpdate, str]] = []
    for message in parsed.messages:
        message.tenant = tenants[message.phone_number_id].name
        message.received_at.CopyFrom(received_at)
        subject = catalogue.inbound_subject(message.tenant, message.contact)
        events.append((subject, message, message.wamid))
    for status in parsed.statuses:
        status.tenant = tenants[status.phone_number_id].name
        subject = catalogue.status_subject(status.tenant, status.contact)
        events.append((subject, status, f"{status.wamid}:{status.status}"))

    results = await _publish_all(runtime, events)
    refused = list(parsed.refused)
    published: list[inbound_pb2.InboundMessage | inbound_pb2.StatusUpdate] = []
    for (_, event, _), result in zip(events, results, strict=True):
        if isinstance(result, EVENT_REFUSED):
            refused.append(_as_refused(event, f"the event bus refused it: {type(result).__name__} {result}"))
        elif isinstance(result, BaseException):
            # Meta retries a non-2xx answer; whatever was already stored dedups on its id.
            raise _refuse(503, "unavailable", f"event bus unavailable: {type(result).__name__}", signer)
        else:
            published.append(event)
    if refused:
        await _dead_letter(runtime, refused, tenants, signer)

    messages = 0
    for event in published:
        if isinstance(event, inbound_pb2.InboundMessage):
            messages += 1
            kind = event.type if event.type in payload.KNOWN_TYPES else "other"
            metrics.INBOUND_MESSAGES.labels(event.tenant, kind).inc()
        else:
            state = event.status if event.status in payload.KNOWN_STATUSES else "other"
            metrics.STATUS_UPDATES.labels(event.tenant, state).inc()
    metrics.WEBHOOK_REQUESTS.labels(signer, "dead_lettered" if refused else "accepted").inc()
    metrics.WEBHOOK_SECONDS.labels(signer).observe(time.perf_counter() - started)
    return {
        "accepted": {"messages": messages, "statuses": len(published) - messages},
        "dead_lettered": [{"where": part.where, "reason": part.reason} for part in refused],
    }


async def _publish_all(
    runtime: GatewayRuntime, events: Sequence[tuple[str, Message, str]]
) -> list[api.PubAck | BaseException]:
    """Publish every event, each result or its exception in order.

    In waves: the process's publishes share one NATS connection, and a body of thousands of
    messages published at once would queue every other webhook's behind all of them.
    """
    js, timeout = runtime.connections.js, runtime.settings.publish_timeout_s
    results: list[api.PubAck | BaseException] = []
    for start in range(0, len(events), PUBLISH_WAVE):
        wave = events[start : start + PUBLISH_WAVE]
        results += await asyncio.gather(
            *(bus.publish(js, subject, event, msg_id, timeout=timeout) for subject, event, msg_id in wave),
            return_exceptions=True,
        )
    return results


def _as_refused(event: inbound_pb2.InboundMessage | inbound_pb2.StatusUpdate, reason: str) -> Refused:
    """An event the bus refused, as a part to dead-letter."""
    is_status = isinstance(event, inbound_pb2.StatusUpdate)
    return Refused(
        where=f"{'status' if is_status else 'message'} {event.wamid}",
        reason=reason,
        raw=event.raw_json.encode(),
        phone_number_id=event.phone_number_id,
        contact=event.contact,
        is_status=is_status,
    )


def _count_unknown(parsed: ParsedWebhook, tenant: str) -> None:
    if parsed.unknown_types:
        metrics.WEBHOOK_UNKNOWN.labels(tenant, "message_type").inc(len(parsed.unknown_types))
    if parsed.unknown_fields:
        metrics.WEBHOOK_UNKNOWN.labels(tenant, "field").inc(len(parsed.unknown_fields))
    if parsed.unknown_types or parsed.unknown_fields:
        # Names only (capped): they say what Meta added, and hold no customer data.
        log.info(
            "webhook has parts zapflow does not know",
            tenant=tenant,
            types=sorted({name[:64] for name in parsed.unknown_types})[:10],
            fields=sorted({name[:128] for name in parsed.unknown_fields})[:10],
        )


def dead_letter_of(tenant: str, part: Refused, limit: int) -> tuple[str, turn_pb2.DeadLetter]:
    """The dead letter of a webhook part that could not be read, and its subject."""
    reason = part.reason
    if len(part.raw) > limit:
        reason += f" (the first {limit} of its {len(part.raw)} bytes are kept)"
    letter = turn_pb2.DeadLetter(
        service=catalogue.GATEWAY_SERVICE,
        consumer=catalogue.WEBHOOK_DEAD_LETTERS,
        original_subject=catalogue.webhook_part_subject(tenant, part.contact, part.is_status),
        # The same part in Meta's retry of the same body is the same dead letter.
        message_id=hashlib.sha256(tenant.encode() + b"\0" + part.where.encode() + b"\0" + part.raw).hexdigest(),
        reason=reason,
        payload=part.raw[:limit],
        at=bus.now_timestamp(),
    )
    return catalogue.webhook_dead_letter_subject(tenant, part.contact, part.is_status), letter


async def _dead_letter(
    runtime: GatewayRuntime, refused: list[Refused], tenants: dict[str, BotTenant], signer: str
) -> None:
    """File every part that could not be read, with its reason and raw bytes, or answer 503."""
    limit = runtime.settings.dead_letter_max_bytes
    letters = []
    for part in refused:
        owner = tenants[part.phone_number_id].name if part.phone_number_id in tenants else signer
        letters.append((owner, *dead_letter_of(owner, part, limit)))
    results = await _publish_all(runtime, [(subject, letter, letter.message_id) for _, subject, letter in letters])
    failure = next((result for result in results if isinstance(result, BaseException)), None)
    if failure is not None:
        raise _refuse(503, "unavailable", f"event bus unavailable: {type(failure).__name__}", signer)
    for (owner, _, letter), ack in zip(letters, results, strict=True):
        # Meta's retry of the same body finds its dead letters already filed.
        if isinstance(ack, api.PubAck) and not ack.duplicate:
            metrics.DEAD_LETTERS.labels(owner, catalogue.WEBHOOK_DEAD_LETTERS).inc()
            log.warning("webhook part dead-lettered", tenant=owner, reason=letter.reason)
