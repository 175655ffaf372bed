"""Structured JSON logs that carry the current trace id and never leak personal data."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import sys
from typing import Any

import structlog
from opentelemetry import trace


def _add_trace_ids(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event["trace_id"] = format(context.trace_id, "032x")
        event["span_id"] = format(context.span_id, "016x")
    return event


def configure_logging(service: str, level: str = "INFO", json: bool = True) -> None:
    """Route stdlib and structlog records through one JSON renderer on stderr."""
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_ids,
        # log.exception(...) carries the traceback as text, not just "exc_info": true.
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log prints query strings, which can hold verify tokens.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    structlog.contextvars.bind_contextvars(service=service)


# A plain hash of a phone number is reversed by hashing every number; one keyed with a secret
# that never leaves the process is not, and still lets one process's log lines be correlated.
_REDACTION_KEY = secrets.token_bytes(32)


def redact_phone(phone: str, debug: bool = False) -> str:
    """A stand-in for a phone number, stable within the process and meaningless outside it."""
    if debug:
        return phone
    return "wa:" + hmac.new(_REDACTION_KEY, phone.encode(), hashlib.sha256).hexdigest()[:12]


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
