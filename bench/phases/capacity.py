"""Phase 2b: ingress capacity, closed loop: as many webhooks per second as the gateway answers."""

from __future__ import annotations

from bench import loadgen
from bench.harness import Harness
from bench.options import Options
from bench.results import CapacityResult, Latency
from bench.workload import Workload

NAME = "ingress_capacity"
# Pre-signed requests per second of the phase: more than the gateway can take, so none runs out.
REQUESTS_PER_S = 5000


async def measure(harness: Harness, workload: Workload, options: Options) -> CapacityResult:
    signed = workload.webhooks(int(options.capacity_duration * REQUESTS_PER_S), options.contacts, "55111")
    print(f"      capacity: closed loop, {options.connections} connections, {options.capacity_duration:.0f} s ...",
          flush=True)  # fmt: skip
    harness.begin(NAME)
    load = loadgen.closed_loop(
        "127.0.0.1", workload.gateway_port, signed.requests, options.connections, options.capacity_duration
    )
    figures = await harness.guarded(load)
    result = CapacityResult(
        connections=figures["connections"],
        duration_s=figures["duration_s"],
        requests=figures["requests"],
        accepted=figures["accepted"],
        statuses=figures["statuses"],
        throughput_per_s=figures["throughput_per_s"],
        exhausted=figures["exhausted"],
        resources=harness.end(),
        latency=Latency.of(figures["latencies"]),
    )
    print(f"      capacity {result.throughput_per_s:.0f}/s, p99 {result.latency.p99_ms} ms", flush=True)
    return result
