"""One customer message is one trace, from the webhook to the Graph API call."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.platform import eventually, running_platform
from zapflow.platform.settings import CoreSettings
from zapflow.tenants.registry import TenantRegistry

CUSTOMER = "5511944443333"


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


async def test_webhook_to_graph_api_is_one_trace(
    core: CoreSettings, registry: TenantRegistry, spans: InMemorySpanExporter
) -> None:
    async with running_platform(core, registry) as platform:
        await platform.say(CUSTOMER, "price")
        await platform.wait_for_texts(CUSTOMER, 2)

        def traces() -> dict[int, set[str]]:
            names: dict[int, set[str]] = {}
            for span in spans.get_finished_spans():
                if span.context is not None:
                    names.setdefault(span.context.trace_id, set()).add(span.name)
            return names

        webhook_to_graph = {
            "POST /webhook/whatsapp",
            "conversation process",
            "conversation turn",
            "gateway-egress process",
            "graph.messages send",
        }

        async def one_trace() -> set[str] | None:
            return next((names for names in traces().values() if webhook_to_graph <= names), None)

        await eventually(one_trace, what="one trace from the webhook to the Graph API call")
