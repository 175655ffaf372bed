"""One benchmark run: the phases in order on one stack, each measuring what the one before left."""

from __future__ import annotations

import dataclasses
import time

import nats
import yaml

from bench.harness import Harness
from bench.options import Options
from bench.phases import capacity, end_to_end, hostile, ingress, raw_jetstream
from bench.results import Phases
from bench.workload import Workload, tenant_documents


async def run_phases(options: Options, harness: Harness) -> Phases:
    stack = harness.stack
    workload = Workload(
        documents=tenant_documents(options.tenants, stack.sandbox_url),
        gateway_port=stack.ports.gateway,
        run_id=f"{int(time.time()) % 100_000:05d}",
    )
    tenant_file = stack.workdir / "tenants.yaml"
    tenant_file.write_text(yaml.safe_dump_all(workload.documents))

    performance = options.phase in ("performance", "all")
    stack.start_infra()
    harness.monitor.start()
    phases = Phases()
    if performance:
        phases = Phases(raw_jetstream=await raw_jetstream.measure(harness, options.raw_messages, workload.run_id))

    stack.apply_tenants(tenant_file)
    stack.start_edge(tenant_file)
    nc = await nats.connect(stack.nats_url, name="bench-observer")
    js = nc.jetstream()
    try:
        if performance:
            webhooks = await ingress.measure(harness, js, workload, options)
            closed_loop = await capacity.measure(harness, workload, options) if options.capacity_duration > 0 else None
            e2e = await end_to_end.measure(harness, js, workload, options)
            phases = dataclasses.replace(phases, ingress=webhooks, ingress_capacity=closed_loop, e2e=e2e)
        if options.phase in ("hostile", "all"):
            phases = dataclasses.replace(phases, hostile=await hostile.measure(harness, js, workload, options))
    finally:
        await nc.close()
    print("[4/4] resources sampled; report follows.\n", flush=True)
    return phases
