"""zapflow benchmark: raw JetStream baseline, webhook ingress, end to end, resources.

    uv run python bench/run.py            # full run (about 3 minutes)
    uv run python bench/run.py --quick    # 5-second smoke version

Starts its own nats-server, redis-server, sandbox, gateway and conversation service(s) on free
loopback ports, in a temporary directory, and stops every one of them on exit (Ctrl-C too).
Prints a markdown report with PASS/FAIL per target and writes it as JSON to
bench/results/latest.json. bench/README.md explains the method and the latest figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/run.py` puts bench/, not the repo root, on the path
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import nats  # noqa: E402
import psutil  # noqa: E402
import yaml  # noqa: E402
from nats.js import api  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from bench import accounting, loadgen, profile  # noqa: E402
from bench.stack import BenchError, Ports, ResourceMonitor, Stack  # noqa: E402
from zapflow.platform import catalogue, keys  # noqa: E402
from zapflow.v1 import inbound_pb2, turn_pb2  # noqa: E402

TARGETS = {
    "ingress_rate": 1000.0,
    "ingress_duration_s": 30.0,
    "ingress_p99_ms": 50.0,
    "e2e_turns_per_s": 300.0,
    "e2e_p99_turn_ms": 100.0,
}
DEBOUNCE = {"windowMs": 300, "maxWaitMs": 1000}
# A contact writes again only this long after its previous message: far beyond the debounce
# window and its maximum wait, so every message is its own turn and turns map 1:1 to messages.
CONTACT_GAP_S = 4.0
RECORDER_CONSUMERS = tuple(
    (spec.stream.name, spec.durable) for spec in catalogue.ALL_CONSUMERS if spec.service == catalogue.RECORDER_SERVICE
)


# --- set-up -----------------------------------------------------------------------------------


def tenant_documents(count: int, sandbox_url: str) -> list[dict[str, Any]]:
    """`count` tenants, each with its own number, secrets and a rules bot that always answers once."""
    documents = []
    for i in range(count):
        name = f"bench-{i}"
        documents.append(
            {
                "apiVersion": "zapflow.io/v1alpha1",
                "kind": "BotTenant",
                "metadata": {"name": name},
                "spec": {
                    "whatsapp": {
                        "phoneNumberId": f"{900_000_000_000_001 + i}",
                        "graphApiUrl": sandbox_url,
                        "apiVersion": "v21.0",
                        "appSecret": {"value": f"app-secret-{name}"},
                        "accessToken": {"value": f"token-{name}"},
                        "verifyToken": {"value": f"verify-{name}"},
                    },
                    "rateLimits": {"messagesPerSecond": 1000},
                    "debounce": DEBOUNCE,
                    "bot": {
                        "responder": "rules",
                        # No greeting: it would be a second send for a first turn.
                        "rules": [{"name": "prices", "match": {"keywords": ["price"]}, "reply": {"text": "From $10."}}],
                        "fallback": {"text": "ok"},
                        # Every reply quotes its turn's last message, so each send maps to its turn.
                        "quoteAfterMessages": 1,
                        "typingIndicator": False,
                    },
                },
            }
        )
    return documents


def build_requests(
    documents: list[dict[str, Any]], port: int, count: int, contacts: int, prefix: str, run_id: str
) -> tuple[list[bytes], list[str], list[str]]:
    """Pre-signed webhook requests (request i from contact i % contacts); their wamids and contacts."""
    epoch = int(time.time())
    requests, wamids, senders = [], [], []
    for i in range(count):
        c = i % contacts
        tenant = documents[c % len(documents)]["spec"]["whatsapp"]
        contact = f"{prefix}{c:08d}"
        wamid = f"wamid.BENCH{run_id}{prefix}{i:08d}"
        text = "what is the price?" if i % 3 == 0 else f"hello {i}"
        body = loadgen.webhook_body(tenant["phoneNumberId"], contact, wamid, text, epoch)
        requests.append(loadgen.http_post("127.0.0.1", port, "/webhook/whatsapp", body, tenant["appSecret"]["value"]))
        wamids.append(wamid)
        senders.append(contact)
    return requests, wamids, senders


# --- phase helpers ------------------------------------------------------------------------------


async def guarded(stack: Stack, work: Any) -> Any:
    """Run a phase, failing at once (with the process's log) if any process of the stack dies."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if done:
            return task.result()
        try:
            stack.check_alive()
        except BenchError:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise


class Profiler:
    """py-spy on chosen processes during a phase (only with --py-spy)."""

    def __init__(self, out_dir: Path | None, rate: int, nonblocking: bool = False) -> None:
        self.out_dir = out_dir
        self.rate = rate
        self.nonblocking = nonblocking
        self.binary = profile.find_py_spy() if out_dir else None
        if out_dir and not self.binary:
            raise BenchError("--py-spy needs py-spy in the venv: uv pip install py-spy")
        self._running: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
        self.summaries: dict[str, Any] = {}

    def begin(self, phase: str, stack: Stack, duration_s: float) -> None:
        if not self.out_dir or not self.binary:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, proc in stack.procs.items():
            if name in ("gateway", "sandbox") or name.startswith("conversation"):
                out = self.out_dir / f"{phase}-{name}.txt"
                spy = profile.start(self.binary, proc.pid, out, duration_s, self.rate, self.nonblocking)
                self._running.append((f"{phase}/{name}", out, spy))

    def end(self, interrupt: bool = False) -> None:
        """Collect the profiles; `interrupt` stops py-spy now (it writes what it has on SIGINT)."""
        for key, out, popen in self._running:
            if interrupt and popen.poll() is None:
                popen.send_signal(signal.SIGINT)
            try:
                popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
            if out.exists():
                self.summaries[key] = profile.summarise(out)
            else:
                error = popen.stderr.read().decode(errors="replace")[-500:] if popen.stderr else ""
                self.summaries[key] = {"error": error or "no output"}
        self._running.clear()

    def stop(self) -> None:
        for _, _, popen in self._running:
            if popen.poll() is None:
                popen.kill()
                popen.wait()


def per_second(times: list[float], start: float, seconds: int) -> list[int]:
    buckets = [0] * seconds
    for t in times:
        index = int(t - start)
        if 0 <= index < seconds:
            buckets[index] += 1
    return buckets


def completion_rate(times: list[float]) -> float:
    """Completions per second over the completion window: (n - 1) / (last - first)."""
    if len(times) < 2:
        return 0.0
    span = max(times) - min(times)
    return (len(times) - 1) / span if span > 0 else 0.0


# --- phase 1: raw JetStream -----------------------------------------------------------------------


async def raw_jetstream(nats_url: str, count: int, run_id: str) -> dict[str, Any]:
    """Async publishes with Nats-Msg-Id to a file stream, then pull-consume and ack them."""
    nc = await nats.connect(nats_url, name="bench-raw")
    try:
        js = nc.jetstream(publish_async_max_pending=4000)
        await js.add_stream(api.StreamConfig(name="BENCH_RAW", subjects=["bench.raw.>"], storage=api.StorageType.FILE))
        # A payload the size of a real InboundMessage, on a per-contact subject as zapflow does.
        sample = inbound_pb2.InboundMessage(
            wamid=f"wamid.BENCH{run_id}RAW00000000", tenant="bench-0", contact="5511900000000",
            phone_number_id="900000000000001", type="text",
        )  # fmt: skip
        sample.text.body = "hello 12345"
        payload = sample.SerializeToString() * 3
        subjects = [f"bench.raw.bench-{c % 4}.55119{c:08d}" for c in range(2000)]
        futures = []
        started = time.perf_counter()
        for i in range(count):
            headers = {"Nats-Msg-Id": f"raw-{run_id}-{i}"}
            futures.append(await js.publish_async(subjects[i % len(subjects)], payload, headers=headers))
        await asyncio.wait_for(js.publish_async_completed(), timeout=120)
        published_s = time.perf_counter() - started
        failed = sum(1 for f in futures if f.exception() is not None)
        duplicates = sum(1 for f in futures if f.exception() is None and f.result().duplicate)

        subscription = await js.pull_subscribe(
            "bench.raw.>", durable="bench-raw", stream="BENCH_RAW", config=api.ConsumerConfig(max_ack_pending=-1)
        )
        received = 0
        started = time.perf_counter()
        deadline = started + 120
        while received < count - failed and time.perf_counter() < deadline:
            try:
                batch = await subscription.fetch(512, timeout=2)
            except nats.errors.TimeoutError:
                continue
            for msg in batch:
                await msg.ack()
            received += len(batch)
        await nc.flush()
        consumed_s = time.perf_counter() - started
        await js.delete_stream("BENCH_RAW")
    finally:
        await nc.close()
    return {
        "messages": count,
        "payload_bytes": len(payload),
        "publish_failed": failed,
        "publish_duplicates": duplicates,
        "publish_per_s": round((count - failed) / published_s, 1),
        "consumed": received,
        "consume_ack_per_s": round(received / consumed_s, 1),
    }


# --- phase 2: ingress --------------------------------------------------------------------------------


def webhook_figures(result: loadgen.LoadResult, duration_s: float, rate: float) -> dict[str, Any]:
    ok = result.ok_indexes
    done_ok = [result.done[i] for i in ok]
    buckets = per_second(done_ok, result.t0, int(duration_s))
    inner = buckets[1:-1] or buckets
    lag = sorted(result.dispatch_lag)
    return {
        "offered_rate_per_s": rate,
        "offered": len(result.status),
        "accepted": len(ok),
        "errors": len(result.status) - len(ok),
        "statuses": result.statuses(),
        "error_kinds": dict(result.errors),
        "reconnects": result.reconnects,
        "throughput_per_s": round(completion_rate(done_ok), 1),
        "per_second_min": min(inner) if inner else 0,
        "per_second_max": max(inner) if inner else 0,
        "latency_from_schedule": accounting.summarise(result.latencies_from_schedule()),
        "service_time": accounting.summarise(result.service_times()),
        "generator_dispatch_lag_ms": {
            "p99": round(1000 * accounting.percentile(lag, 99), 2) if lag else None,
            "max": round(1000 * lag[-1], 2) if lag else None,
        },
    }


async def stream_messages(js: Any, stream: str) -> int:
    info = await js.stream_info(stream)
    return int(info.state.messages)


# --- phase 3: end to end -------------------------------------------------------------------------


def _seconds(stamp: Any) -> float:
    return float(stamp.seconds) + stamp.nanos / 1e9


async def read_turns(js: Any) -> list[accounting.TurnRecord]:
    info = await js.stream_info(catalogue.EVENTS.name, subjects_filter=catalogue.events_of(catalogue.TURN))
    expected = sum((info.state.subjects or {}).values())
    turns: list[accounting.TurnRecord] = []
    if not expected:
        return turns
    turns_subject = catalogue.events_of(catalogue.TURN)
    subscription = await js.subscribe(turns_subject, stream=catalogue.EVENTS.name, ordered_consumer=True)
    try:
        while len(turns) < expected:
            msg = await subscription.next_msg(timeout=10)
            turn = turn_pb2.Turn.FromString(msg.data)
            turns.append(
                accounting.TurnRecord(
                    turn_id=turn.turn_id,
                    wamids=tuple(turn.inbound_wamids),
                    duplicate_wamids=tuple(turn.duplicate_wamids),
                    started_at=_seconds(turn.started_at),
                    closed_at=_seconds(turn.closed_at),
                    answered_at=_seconds(turn.answered_at),
                )
            )
    finally:
        await subscription.unsubscribe()
    return turns


async def read_sends(sandbox_url: str) -> list[accounting.SendRecord]:
    async with httpx.AsyncClient(timeout=60) as client:
        answer = await client.get(f"{sandbox_url}/sandbox/messages")
        answer.raise_for_status()
    sends = []
    for message in answer.json()["messages"]:
        context = (message.get("payload") or {}).get("context") or {}
        sends.append(accounting.SendRecord(message["to"], context.get("message_id"), float(message["timestamp"])))
    return sends


async def sample_backlogs(
    js: Any, redis_url: str, stop: asyncio.Event, record: bool, interval_s: float = 0.5
) -> dict[str, Any]:
    """Where work queues up during the end-to-end phase, sampled twice a second.

    inbound / outbound: messages the conversation service / egress has not fetched yet, plus
    those it holds unacknowledged (the conversation holds a message until its turn is answered).
    overdue: contacts whose debounce deadline passed more than 50 ms ago and whose turn is not
    finished (waiting for the closer, or running). recorder (with --recorder): events of every
    stream the recorder has not written yet.
    """
    redis = Redis.from_url(redis_url)
    series: dict[str, list[int]] = {"inbound_pending": [], "inbound_held": [], "outbound_pending": [], "overdue": []}
    if record:
        series["recorder_pending"] = []
    try:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                inbound = await js.consumer_info(catalogue.INBOUND.name, catalogue.CONVERSATION_INBOUND.durable)
                outbound = await js.consumer_info(catalogue.OUTBOUND.name, catalogue.EGRESS.durable)
                overdue = await redis.zcount(keys.DUE, "-inf", int(time.time() * 1000) - 50)
                store_backlog = await recorder_backlog(js) if record else None
                series["inbound_pending"].append(int(inbound.num_pending or 0))
                series["inbound_held"].append(int(inbound.num_ack_pending or 0))
                series["outbound_pending"].append(int((outbound.num_pending or 0) + (outbound.num_ack_pending or 0)))
                series["overdue"].append(int(overdue))
                if store_backlog is not None:
                    series["recorder_pending"].append(store_backlog)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
    finally:
        await redis.aclose()
    return {
        name: {"max": max(values), "mean": round(sum(values) / len(values), 1), "last": values[-1]}
        for name, values in series.items()
        if values
    }


async def recorder_backlog(js: Any) -> int:
    """Events the recorder has not written yet, over its five consumers."""
    backlog = 0
    for stream, durable in RECORDER_CONSUMERS:
        info = await js.consumer_info(stream, durable)
        backlog += int((info.num_pending or 0) + (info.num_ack_pending or 0))
    return backlog


async def recorder_catch_up(js: Any, stack: Stack, since: float, timeout_s: float) -> dict[str, Any]:
    """Wait (bounded) until the recorder has written everything; how far behind it was."""
    left = await recorder_backlog(js)
    deadline = time.monotonic() + timeout_s
    backlog = left
    while backlog and time.monotonic() < deadline:
        stack.check_alive()
        await asyncio.sleep(0.5)  # polling the consumers' own state until the recorder is idle
        backlog = await recorder_backlog(js)
    return {
        "backlog_when_settled": left,
        "caught_up_s_after_last_webhook": None if backlog else round(time.monotonic() - since, 1),
    }


async def consumers_idle(js: Any) -> bool:
    for consumer in (catalogue.CONVERSATION_INBOUND, catalogue.EGRESS):
        info = await js.consumer_info(consumer.stream.name, consumer.durable)
        if info.num_pending or info.num_ack_pending:
            return False
    return True


async def settle(js: Any, stack: Stack, accepted: list[str], maybe: list[str], timeout_s: float) -> Any:
    """Wait (bounded) until the system is idle and the accounting is complete; return the records."""
    deadline = time.monotonic() + timeout_s
    while True:
        stack.check_alive()
        if await consumers_idle(js):
            turns = await read_turns(js)
            sends = await read_sends(stack.sandbox_url)
            checked = accounting.account(accepted, turns, sends, maybe)
            if checked.ok or time.monotonic() > deadline:
                return turns, sends, checked
        elif time.monotonic() > deadline:
            turns = await read_turns(js)
            sends = await read_sends(stack.sandbox_url)
            return turns, sends, accounting.account(accepted, turns, sends, maybe)
        await asyncio.sleep(0.5)  # polling the system's own records until it is idle


def e2e_figures(
    result: loadgen.LoadResult,
    wamids: list[str],
    turns: list[accounting.TurnRecord],
    checked: accounting.Accounting,
    duration_s: float,
    rate: float,
) -> dict[str, Any]:
    index_of = {w: i for i, w in enumerate(wamids)}
    answered = [t for t in turns if t.wamids]
    answered_at = [t.answered_at for t in answered]
    buckets = per_second(answered_at, result.wall_t0, int(duration_s))
    inner = buckets[2:-1] or buckets
    to_send_scheduled, to_send_written, egress, close_stage = [], [], [], []
    for turn in answered:
        close_stage.append(turn.closed_at - turn.started_at)
        send = checked.send_of_turn.get(turn.turn_id)
        i = index_of.get(turn.wamids[-1])
        if send is None or i is None:
            continue
        to_send_scheduled.append(send.timestamp - result.wall(result.scheduled[i]))
        to_send_written.append(send.timestamp - result.wall(result.sent[i]))
        egress.append(send.timestamp - turn.answered_at)
    makespan = (max(answered_at) - result.wall_t0) if answered_at else 0.0
    return {
        "offered_rate_per_s": rate,
        "webhooks": webhook_figures(result, duration_s, rate),
        "turns": len(turns),
        "turns_per_s": round(completion_rate(answered_at), 1),
        "turns_per_s_makespan": round(len(answered) / makespan, 1) if makespan else 0.0,
        "turns_per_second_min": min(inner) if inner else 0,
        "turns_per_second_max": max(inner) if inner else 0,
        "turn_latency": accounting.summarise(t.answered_at - t.closed_at for t in answered),
        "webhook_to_send_from_schedule": accounting.summarise(to_send_scheduled),
        "webhook_to_send_from_write": accounting.summarise(to_send_written),
        "stages": {
            "received_to_closed (includes the debounce window)": accounting.summarise(close_stage),
            "answered_to_sent (egress + Graph call)": accounting.summarise(egress),
        },
        "accounting": checked.as_dict(),
    }


def drain_rate(result: loadgen.LoadResult, sends: list[accounting.SendRecord]) -> dict[str, Any]:
    """Sends after the last webhook was answered: egress's pace when it has a backlog to clear."""
    last_webhook = result.wall(max(result.done))
    late = sorted(s.timestamp for s in sends if s.timestamp > last_webhook)
    if len(late) < 2:
        return {"sends": len(late), "per_s": None}
    return {"sends": len(late), "seconds": round(late[-1] - last_webhook, 2), "per_s": round(completion_rate(late), 1)}


# --- the run ------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, stack: Stack, monitor: ResourceMonitor, profiler: Profiler) -> dict[str, Any]:
    run_id = f"{int(time.time()) % 100_000:05d}"
    report: dict[str, Any] = {"phases": {}}
    documents = tenant_documents(args.tenants, stack.sandbox_url)
    tenant_file = stack.workdir / "tenants.yaml"
    tenant_file.write_text(yaml.safe_dump_all(documents))

    stack.start_infra()
    monitor.start()

    # Phase 1: raw JetStream from Python, with only nats-server and redis-server running.
    print(f"[1/4] raw JetStream: {args.raw_messages} async publishes, then pull-consume + ack ...", flush=True)
    monitor.begin("raw_jetstream")
    raw = await guarded(stack, raw_jetstream(stack.nats_url, args.raw_messages, run_id))
    raw["resources"] = monitor.end()
    report["phases"]["raw_jetstream"] = raw
    print(f"      publish {raw['publish_per_s']:.0f}/s, consume+ack {raw['consume_ack_per_s']:.0f}/s", flush=True)

    stack.apply_tenants(tenant_file)
    stack.start_edge(tenant_file)
    nc = await nats.connect(stack.nats_url, name="bench-observer")
    js = nc.jetstream()
    try:
        # Phase 2: ingress, open loop, without the conversation service (the webhook path ends
        # at the JetStream ack; nothing downstream competes for the two cores).
        count = int(args.rate * args.duration)
        requests, _, _ = build_requests(documents, stack.ports.gateway, count, args.contacts, "55110", run_id)
        before = await stream_messages(js, catalogue.INBOUND.name)
        print(f"[2/4] ingress: {count} signed webhooks at {args.rate:.0f}/s over {args.connections} connections ...",
              flush=True)  # fmt: skip
        monitor.begin("ingress")
        profiler.begin("ingress", stack, args.duration)
        result = await guarded(stack, loadgen.open_loop("127.0.0.1", stack.ports.gateway, requests, args.rate,
                                                        args.connections))  # fmt: skip
        profiler.end()
        ingress = webhook_figures(result, args.duration, args.rate)
        ingress["resources"] = monitor.end()
        ingress["duration_s"] = args.duration
        ingress["conversation_running"] = False
        ingress["persisted_in_jetstream"] = await stream_messages(js, catalogue.INBOUND.name) - before
        report["phases"]["ingress"] = ingress
        lat = ingress["latency_from_schedule"]
        print(f"      {ingress['accepted']}/{count} accepted, {ingress['throughput_per_s']:.0f}/s, "
              f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms", flush=True)  # fmt: skip
        del requests

        # Phase 2b: ingress capacity, closed loop (as fast as the gateway answers).
        if args.capacity_duration > 0:
            count = int(args.capacity_duration * 5000)
            requests, _, _ = build_requests(documents, stack.ports.gateway, count, args.contacts, "55111", run_id)
            print(f"      capacity: closed loop, {args.connections} connections, {args.capacity_duration:.0f} s ...",
                  flush=True)  # fmt: skip
            monitor.begin("ingress_capacity")
            load = loadgen.closed_loop(
                "127.0.0.1", stack.ports.gateway, requests, args.connections, args.capacity_duration
            )
            capacity = await guarded(stack, load)
            capacity["resources"] = monitor.end()
            capacity["latency"] = accounting.summarise(capacity.pop("latencies"))
            report["phases"]["ingress_capacity"] = capacity
            print(f"      capacity {capacity['throughput_per_s']:.0f}/s, p99 {capacity['latency']['p99_ms']} ms",
                  flush=True)  # fmt: skip
            del requests

        # The ingress messages were never consumed: purge them so the conversation service
        # starts on an empty inbound stream and the end-to-end phase measures only its own turns.
        await js.purge_stream(catalogue.INBOUND.name)

        # Phase 3: end to end with the conversation service(s).
        stack.start_conversations(record=args.recorder)
        count = int(args.e2e_rate * args.e2e_duration)
        contacts = max(200, math.ceil(args.e2e_rate * CONTACT_GAP_S))
        requests, wamids, _ = build_requests(documents, stack.ports.gateway, count, contacts, "55120", run_id)
        print(f"[3/4] end to end: {count} single-message turns at {args.e2e_rate:.0f}/s from {contacts} contacts, "
              f"{len(stack.ports.conversations)} conversation replica(s) ...", flush=True)  # fmt: skip
        monitor.begin("e2e")
        profiler.begin("e2e", stack, args.e2e_duration)
        stop_sampling = asyncio.Event()
        sampler = asyncio.create_task(sample_backlogs(js, stack.redis_url, stop_sampling, args.recorder))
        result = await guarded(stack, loadgen.open_loop("127.0.0.1", stack.ports.gateway, requests, args.e2e_rate,
                                                        args.e2e_connections))  # fmt: skip
        stop_sampling.set()
        backlogs = await sampler
        profiler.end()
        resources = monitor.end()
        sent_at = time.monotonic()
        accepted = [wamids[i] for i in result.ok_indexes]
        maybe = [wamids[i] for i, s in enumerate(result.status) if s != 200]
        monitor.begin("e2e_drain")
        profiler.begin("e2e_drain", stack, args.settle_timeout)
        turns, sends, checked = await settle(js, stack, accepted, maybe, args.settle_timeout)
        store_lag = await recorder_catch_up(js, stack, sent_at, args.settle_timeout) if args.recorder else None
        profiler.end(interrupt=True)
        drain = monitor.end()
        e2e = e2e_figures(result, wamids, turns, checked, args.e2e_duration, args.e2e_rate)
        e2e["egress_while_draining"] = drain_rate(result, sends)
        e2e["backlogs_while_sending"] = backlogs
        e2e["recorder"] = store_lag
        e2e["contacts"] = contacts
        e2e["conversation_replicas"] = len(stack.ports.conversations)
        e2e["debounce"] = DEBOUNCE
        e2e["settle_s"] = round(time.monotonic() - sent_at, 1)
        e2e["resources"] = resources
        e2e["drain_resources"] = drain
        report["phases"]["e2e"] = e2e
        lat = e2e["turn_latency"]
        print(f"      {e2e['turns']} turns, {e2e['turns_per_s']:.0f}/s, turn p50 {lat['p50_ms']} ms, "
              f"p99 {lat['p99_ms']} ms, accounting {'OK' if checked.ok else 'FAILED'}", flush=True)  # fmt: skip
    finally:
        await nc.close()
    if profiler.summaries:
        report["profiles"] = profiler.summaries
    print("[4/4] resources sampled; report follows.\n", flush=True)
    return report


# --- targets and the report -----------------------------------------------------------------------------


def verdicts(report: dict[str, Any]) -> list[dict[str, Any]]:
    phases = report["phases"]
    raw = phases.get("raw_jetstream", {})
    ingress = phases.get("ingress")
    e2e = phases.get("e2e")
    capacity = phases.get("ingress_capacity")
    out: list[dict[str, Any]] = []
    if ingress:
        p99 = ingress["latency_from_schedule"]["p99_ms"]
        # Throughput criterion: every webhook offered at >= 1,000/s for >= 30 s was answered 200
        # and the latency from the *scheduled* time stayed bounded, i.e. no backlog built up.
        kept_up = (
            ingress["offered_rate_per_s"] >= TARGETS["ingress_rate"]
            and ingress["errors"] == 0
            and p99 is not None
            and p99 <= TARGETS["ingress_p99_ms"]
        )
        rate_ok = ingress["throughput_per_s"] >= TARGETS["ingress_rate"] or kept_up
        long_enough = ingress["duration_s"] >= TARGETS["ingress_duration_s"]
        # I1: a 200 means the message is in JetStream (the stream gained one per accepted webhook).
        persisted = ingress["persisted_in_jetstream"] == ingress["accepted"]
        out.append(
            {
                "target": "ingress >= 1,000 msg/s for 30 s, p99 webhook <= 50 ms",
                "measured": f"{ingress['throughput_per_s']:.0f}/s offered {ingress['offered_rate_per_s']:.0f}/s for "
                f"{ingress['duration_s']:.0f} s, {ingress['errors']} errors, p99 {p99} ms (from schedule), "
                f"{ingress['persisted_in_jetstream']} of {ingress['accepted']} accepted in JetStream",
                "pass": bool(
                    rate_ok and long_enough and persisted and p99 is not None and p99 <= TARGETS["ingress_p99_ms"]
                ),
            }
        )
    if e2e:
        p99 = e2e["turn_latency"]["p99_ms"]
        ok = (
            e2e["turns_per_s"] >= TARGETS["e2e_turns_per_s"]
            and p99 is not None
            and p99 <= TARGETS["e2e_p99_turn_ms"]
            and e2e["accounting"]["ok"]
        )
        out.append(
            {
                "target": "end to end >= 300 turns/s, p99 turn latency <= 100 ms, zero loss/duplicates",
                "measured": f"{e2e['turns_per_s']:.0f} turns/s, p99 {p99} ms, lost {e2e['accounting']['lost']}, "
                f"duplicates {e2e['accounting']['duplicates']}",
                "pass": bool(ok),
            }
        )
    if e2e:
        send = e2e["webhook_to_send_from_schedule"]
        out.append(
            {
                "target": "webhook -> reply accepted by the Graph API (information; includes the debounce window)",
                "measured": f"p50 {send['p50_ms']} ms, p99 {send['p99_ms']} ms (window {DEBOUNCE['windowMs']} ms)",
                "pass": None,
            }
        )
    publish = raw.get("publish_per_s")
    if publish:
        fractions = {}
        if capacity:
            fractions["ingress capacity"] = capacity["throughput_per_s"] / publish
        if ingress:
            fractions["ingress (paced)"] = ingress["throughput_per_s"] / publish
        if e2e:
            fractions["end to end turns"] = e2e["turns_per_s"] / publish
        out.append(
            {
                "target": "zapflow throughput as a fraction of raw JetStream publish rate (information)",
                "measured": ", ".join(f"{k} {100 * v:.1f}%" for k, v in fractions.items()),
                "pass": None,
            }
        )
    return out


def _fmt(value: Any) -> str:
    return "–" if value is None else str(value)


def markdown(report: dict[str, Any]) -> str:
    phases = report["phases"]
    lines = [f"# zapflow benchmark — {report['meta']['date']}", ""]
    meta = report["meta"]
    lines += [
        f"Machine: {meta['cpu']} ({meta['cores']} cores), {meta['memory_gib']} GiB, {meta['os']}; "
        f"Python {meta['python']}, nats-server {meta['nats_server']}, redis {meta['redis_server']}; "
        f"commit {meta['commit']}.",
        f"Command: `{meta['command']}`",
        "",
        "## Targets",
        "",
        "| target | measured | result |",
        "|---|---|---|",
    ]
    for v in report["verdicts"]:
        result = "—" if v["pass"] is None else ("**PASS**" if v["pass"] else "**FAIL**")
        lines.append(f"| {v['target']} | {v['measured']} | {result} |")
    raw = phases.get("raw_jetstream")
    if raw:
        lines += [
            "",
            "## Raw JetStream (Python, same machine)",
            "",
            "| messages | payload | async publish (Nats-Msg-Id) | pull consume + ack |",
            "|---|---|---|---|",
            f"| {raw['messages']} | {raw['payload_bytes']} B | {raw['publish_per_s']:.0f}/s | "
            f"{raw['consume_ack_per_s']:.0f}/s |",
        ]
    lines += [
        "",
        "## Webhooks (latency in ms)",
        "",
        "| phase | offered/s | accepted | errors | achieved/s | min..max per s | p50 | p90 | p99 | max | "
        "p99 service time | generator lag p99 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, figures in (("ingress", phases.get("ingress")), ("e2e", (phases.get("e2e") or {}).get("webhooks"))):
        if not figures:
            continue
        lat = figures["latency_from_schedule"]
        lines.append(
            f"| {name} | {figures['offered_rate_per_s']:.0f} | {figures['accepted']} | {figures['errors']} | "
            f"{figures['throughput_per_s']:.0f} | {figures['per_second_min']}..{figures['per_second_max']} | "
            f"{_fmt(lat['p50_ms'])} | {_fmt(lat['p90_ms'])} | {_fmt(lat['p99_ms'])} | {_fmt(lat['max_ms'])} | "
            f"{_fmt(figures['service_time']['p99_ms'])} | {_fmt(figures['generator_dispatch_lag_ms']['p99'])} |"
        )
    capacity = phases.get("ingress_capacity")
    if capacity:
        lat = capacity["latency"]
        lines += [
            "",
            f"Ingress capacity (closed loop, {capacity['connections']} connections, {capacity['duration_s']} s): "
            f"**{capacity['throughput_per_s']:.0f} webhooks/s**, p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, "
            f"statuses {capacity['statuses']}.",
        ]
    e2e = phases.get("e2e")
    if e2e:
        acc = e2e["accounting"]
        lines += [
            "",
            f"## End to end ({e2e['conversation_replicas']} conversation replica(s), {e2e['contacts']} contacts, "
            f"debounce {e2e['debounce']['windowMs']} ms / max {e2e['debounce']['maxWaitMs']} ms)",
            "",
            "| measure | count | p50 | p90 | p99 | max |",
            "|---|---|---|---|---|---|",
        ]
        rows = [
            ("turn latency (debounce close → outbound publish)", e2e["turn_latency"]),
            ("webhook → sandbox send (from schedule)", e2e["webhook_to_send_from_schedule"]),
            ("webhook → sandbox send (from write)", e2e["webhook_to_send_from_write"]),
            *((f"stage: {k}", v) for k, v in e2e["stages"].items()),
        ]
        for label, s in rows:
            lines.append(
                f"| {label} | {s['count']} | {_fmt(s['p50_ms'])} | {_fmt(s['p90_ms'])} | {_fmt(s['p99_ms'])} | "
                f"{_fmt(s['max_ms'])} |"
            )
        lines += [
            "",
            f"Turns: {e2e['turns']} answered, **{e2e['turns_per_s']:.0f} turns/s** "
            f"({e2e['turns_per_second_min']}..{e2e['turns_per_second_max']} per second; "
            f"{e2e['turns_per_s_makespan']:.0f}/s over the makespan), "
            f"settled {e2e['settle_s']} s after the last webhook"
            + (
                f" (egress sent {e2e['egress_while_draining']['sends']} backlogged replies at "
                f"{e2e['egress_while_draining']['per_s']}/s meanwhile)."
                if e2e["egress_while_draining"]["per_s"]
                else "."
            ),
            "Backlogs while sending (max / mean of 0.5 s samples): "
            + ", ".join(f"{k} {v['max']} / {v['mean']}" for k, v in e2e["backlogs_while_sending"].items())
            + ".",
            *(
                [
                    f"Recorder: {e2e['recorder']['backlog_when_settled']} events not yet written when the turns "
                    f"settled; caught up {_fmt(e2e['recorder']['caught_up_s_after_last_webhook'])} s after the "
                    "last webhook."
                ]
                if e2e.get("recorder")
                else []
            ),
            f"Accounting: accepted {acc['accepted_messages']}, turns {acc['turns']}, sends {acc['sends']}, "
            f"lost {acc['lost']}, duplicates {acc['duplicates']}, messages per turn {acc['messages_per_turn']} "
            f"→ **{'OK' if acc['ok'] else 'FAILED'}**.",
        ]
    lines += ["", "## Resources (CPU: % of one core, averaged over the phase; peak RSS in MiB)", ""]
    names = sorted({n for p in phases.values() for n in p.get("resources", {}).get("processes", {})})
    phase_names = [n for n in ("raw_jetstream", "ingress", "ingress_capacity", "e2e") if n in phases]
    lines.append("| process | " + " | ".join(f"{p} CPU | {p} RSS" for p in phase_names) + " |")
    lines.append("|---|" + "---|---|" * len(phase_names))
    for name in names:
        cells = []
        for p in phase_names:
            entry = phases[p]["resources"]["processes"].get(name)
            cells += [f"{entry['cpu_pct_of_one_core']}%", f"{entry['peak_rss_mib']}"] if entry else ["–", "–"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    totals = [f"{phases[p]['resources']['total_cpu_pct']}%" for p in phase_names]
    lines.append("| **total** | " + " | ".join(f"{t} | " for t in totals) + "")
    drain = (phases.get("e2e") or {}).get("drain_resources")
    if drain:
        busiest = ", ".join(
            f"{n} {r['cpu_pct_of_one_core']}%"
            for n, r in sorted(drain["processes"].items(), key=lambda x: -x[1]["cpu_pct_of_one_core"])[:3]
        )
        lines += [
            "",
            f"e2e drain (after the last webhook until settled, {drain['wall_s']} s, the bench's accounting reads "
            f"included): total {drain['total_cpu_pct']}% ({busiest}).",
        ]
    if report.get("profiles"):
        lines += ["", "## Profiles (py-spy, share of non-idle samples)", ""]
        for key, summary in report["profiles"].items():
            if "error" in summary:
                lines.append(f"- {key}: {summary['error']}")
                continue
            top = "; ".join(f"{f['frame']} {f['pct']}%" for f in summary["self"][:6])
            lines.append(f"- **{key}** ({summary['samples']} samples) self: {top}")
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def output(command: list[str]) -> str:
        with contextlib.suppress(Exception):
            return subprocess.run(command, capture_output=True, text=True, timeout=10, cwd=ROOT, check=False).stdout
        return ""

    from zapflow.dev import find_nats_server, find_redis_server

    commit = output(["git", "rev-parse", "--short", "HEAD"]).strip()
    diff = output(["git", "diff", "HEAD", "--", "services"])
    dirty = bool(diff.strip())
    # Uncommitted changes are named by a hash of their diff, so results map to exact code.
    diff_id = hashlib.sha1(diff.encode()).hexdigest()[:8]  # noqa: S324 - an identifier, not security
    redis_version = output([find_redis_server(), "--version"]).split()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "nats_server": (output([find_nats_server(), "--version"]).split() or ["?"])[-1],
        "redis_server": next((w.split("=", 1)[1] for w in redis_version if w.startswith("v=")), "?"),
        "commit": commit + (f"+uncommitted services changes (diff {diff_id})" if dirty else ""),
        "command": "uv run python bench/run.py " + " ".join(sys.argv[1:]),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000, help="ingress webhooks per second (default 1000)")
    parser.add_argument("--duration", type=float, default=30, help="ingress seconds (default 30)")
    parser.add_argument("--e2e-rate", type=float, default=350, help="end-to-end turns per second (default 350)")
    parser.add_argument("--e2e-duration", type=float, default=30, help="end-to-end seconds (default 30)")
    parser.add_argument("--conversation-replicas", type=int, default=1, choices=(1, 2, 3, 4))
    parser.add_argument("--quick", action="store_true", help="a 5-second smoke version of every phase")
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--contacts", type=int, default=2000, help="contacts of the ingress phase")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections for ingress")
    parser.add_argument("--e2e-connections", type=int, default=32)
    parser.add_argument("--raw-messages", type=int, default=50_000)
    parser.add_argument("--capacity-duration", type=float, default=10, help="closed-loop ingress seconds (0: skip)")
    parser.add_argument("--settle-timeout", type=float, default=90)
    parser.add_argument("--base-port", type=int, help="fixed ports from here (default: free ports)")
    parser.add_argument("--workdir", type=Path, help="where data and logs go (default: a temporary dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, data) afterwards")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    parser.add_argument("--py-spy", type=Path, metavar="DIR", help="profile services with py-spy into DIR")
    parser.add_argument(
        "--recorder",
        action="store_true",
        help="also run the recorder (the relational store's writer) and report how far behind it falls",
    )
    parser.add_argument("--py-spy-rate", type=int, default=67, help="samples per second (default 67)")
    parser.add_argument("--py-spy-nonblocking", action="store_true", help="do not pause the profiled processes")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = args.e2e_duration = 5.0
        args.raw_messages = min(args.raw_messages, 10_000)
        args.capacity_duration = min(args.capacity_duration, 3.0)
        args.settle_timeout = min(args.settle_timeout, 60.0)
    if args.rate <= 0 or args.e2e_rate <= 0 or args.duration <= 0 or args.e2e_duration <= 0:
        parser.error("rates and durations must be positive")
    return args


def _terminate(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C must stop the run and clean up even when started from a shell that ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="zapflow-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stack: Stack | None = None
    profiler: Profiler | None = None
    monitor: ResourceMonitor | None = None
    try:
        stack = Stack(workdir, Ports.choose(args.base_port, args.conversation_replicas))
        monitor = ResourceMonitor(stack)
        profiler = Profiler(args.py_spy, args.py_spy_rate, args.py_spy_nonblocking)
        meta = machine()
        try:
            import uvloop  # a dependency of uvicorn[standard]: the generator's event loop too

            report = uvloop.run(run(args, stack, monitor, profiler))
        except ImportError:
            report = asyncio.run(run(args, stack, monitor, profiler))
        monitor.stop()
        report["meta"] = meta
        report["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        report["peak_rss_mib"] = {k: round(v / 2**20, 1) for k, v in monitor.peak_rss.items()}
        report["targets"] = TARGETS
        report["verdicts"] = verdicts(report)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(markdown(report))
        print(f"JSON report: {args.json}")
        failed = [v for v in report["verdicts"] if v["pass"] is False]
        return 1 if failed else 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process ...", file=sys.stderr)
        return 130
    except BenchError as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 2
    finally:
        if profiler is not None:
            profiler.stop()
        if monitor is not None:
            monitor.stop()
        if stack is not None:
            stack.stop()
            leftovers = [p.name for p in stack.procs.values() if p.exited() is None]
            if leftovers:
                print(f"warning: still running: {leftovers}", file=sys.stderr)
        if args.keep or args.workdir:
            print(f"work dir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        # Any stray child of ours (none expected) goes with us.
        for child in psutil.Process(os.getpid()).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()


if __name__ == "__main__":
    sys.exit(main())
