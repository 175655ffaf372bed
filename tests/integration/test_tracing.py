"""One customer message is one trace, from the webhook to the Graph API call."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from zapflow.core.registry import TenantRegistry
from zapflow.core.settings import CoreSettings

from tests.support.platform import eventually, running_platform

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
        wamid = await platform.say(CUSTOMER, "price")
        await platform.wait_for_texts(CUSTOMER, 2)

        async def reply_sent() -> list[ReadableSpan] | None:
            found = [
                s
                for s in spans.get_finished_spans()
                if s.name == "graph.messages send" and (s.attributes or {}).get("zapflow.command_id") == f"{wamid}:1"
            ]
            return found or None

        graph_span = (await eventually(reply_sent, what="the Graph API span of the reply"))[0]

    assert graph_span.context is not None
    trace_id = graph_span.context.trace_id
    names = {s.name for s in spans.get_finished_spans() if s.context is not None and s.context.trace_id == trace_id}
    assert {"POST /webhook/whatsapp", "conversation process", "gateway-egress process", "graph.messages send"} <= names
