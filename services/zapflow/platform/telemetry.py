"""OpenTelemetry set-up and trace-context propagation through NATS headers."""

from __future__ import annotations

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_configured = False


def configure_tracing(service: str, otlp_endpoint: str | None) -> None:
    """Install a tracer provider; spans are exported only when an OTLP endpoint is set."""
    global _configured
    if _configured:
        return
    provider = TracerProvider(resource=Resource.create({"service.name": f"zapflow-{service}"}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    trace.set_tracer_provider(provider)
    _configured = True


def inject_headers(headers: dict[str, str]) -> dict[str, str]:
    """Add the current trace context (traceparent/tracestate) to outgoing NATS headers."""
    propagate.inject(headers)
    return headers


def extract_context(headers: dict[str, str] | None) -> Context:
    return propagate.extract(headers or {})


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)
