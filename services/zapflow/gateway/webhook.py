"""The WhatsApp webhook: verification handshake and signed notifications."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from zapflow.gateway.runtime import CurrentRuntime, GatewayRuntime
from zapflow.platform import bus, catalogue, metrics
from zapflow.platform.logging import get_logger
from zapflow.tenants.model import BotTenant
from zapflow.tenants.secrets import SecretUnavailable
from zapflow.whatsapp.signature import signature_matches
from zapflow.whatsapp.webhook import PayloadError, parse_webhook, phone_number_ids_hint

log = get_logger(__name__)
router = APIRouter(prefix="/webhook", tags=["webhook"])
tracer = trace.get_tracer(__name__)


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
    mode: Annotated[str, Query(alias="hub.mode")] = "",
    token: Annotated[str, Query(alias="hub.verify_token")] = "",
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


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(status_code=413, detail=f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(status_code=413, detail=f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


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
    body = await _read_body(request, runtime.settings.max_body_bytes)
    tenants = _verified_tenants(runtime, body, signature)
    label = next(iter(tenants.values())).name
    try:
        parsed = parse_webhook(json.loads(body))
    except json.JSONDecodeError as error:
        raise _refuse(400, "malformed", f"body is not JSON: {error.msg} at {error.pos}", label) from None
    except PayloadError as error:
        raise _refuse(400, "malformed", str(error), label) from None
    unverified = parsed.phone_number_ids - tenants.keys()
    if unverified:
        raise _refuse(403, "bad_signature", "the payload names a number the signature does not cover", label)

    received_at = bus.now_timestamp()
    publishes: list[tuple[str, Message, str]] = []
    for message in parsed.messages:
        message.tenant = tenants[message.phone_number_id].name
        message.received_at.CopyFrom(received_at)
        subject = catalogue.inbound_subject(message.tenant, message.contact)
        publishes.append((subject, message, message.wamid))
    for status in parsed.statuses:
        status.tenant = tenants[status.phone_number_id].name
        subject = catalogue.status_subject(status.tenant, status.contact)
        publishes.append((subject, status, f"{status.wamid}:{status.status}"))

    timeout = runtime.settings.publish_timeout_s
    results = await asyncio.gather(
        *(
            bus.publish(runtime.connections.js, subject, event, msg_id, timeout=timeout)
            for subject, event, msg_id in publishes
        ),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        # Meta retries a non-2xx answer; whatever was already stored dedups on its id.
        raise _refuse(503, "unavailable", f"event bus unavailable: {type(failures[0]).__name__}", label)
    for message in parsed.messages:
        metrics.INBOUND_MESSAGES.labels(message.tenant, message.type).inc()
    for status in parsed.statuses:
        metrics.STATUS_UPDATES.labels(status.tenant, status.status).inc()
    metrics.WEBHOOK_REQUESTS.labels(label, "accepted").inc()
    metrics.WEBHOOK_SECONDS.labels(label).observe(time.perf_counter() - started)
    return {"accepted": {"messages": len(parsed.messages), "statuses": len(parsed.statuses)}}
