"""The options of a benchmark run (`bench/run.py --help` describes each one)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

LATEST = Path(__file__).resolve().parent / "results" / "latest.json"
HOSTILE = LATEST.with_name("hostile.json")
PHASES = ("performance", "hostile", "all")


@dataclass(frozen=True)
class Options:
    """One field per command-line option, in the order `--help` lists them (the JSON's `config`)."""

    rate: float
    duration: float
    e2e_rate: float
    e2e_duration: float
    conversation_replicas: int
    quick: bool
    tenants: int
    contacts: int
    connections: int
    e2e_connections: int
    raw_messages: int
    capacity_duration: float
    settle_timeout: float
    base_port: int | None
    workdir: Path | None
    keep: bool
    json: Path
    py_spy: Path | None
    recorder: bool
    py_spy_rate: int
    py_spy_nonblocking: bool
    phase: str
    hostile_bodies: int
    hostile_concurrency: int
    hostile_seed: int


def parse_options(argv: list[str] | None = None, description: str | None = None) -> Options:
    """The options of the command line `argv` (default: sys.argv); --quick shortens every phase."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    parser.add_argument("--json", type=Path, help="where the JSON goes (default results/latest.json, hostile.json)")
    parser.add_argument("--py-spy", type=Path, metavar="DIR", help="profile services with py-spy into DIR")
    parser.add_argument(
        "--recorder",
        action="store_true",
        help="also run the recorder (the relational store's writer) and report how far behind it falls",
    )
    parser.add_argument("--py-spy-rate", type=int, default=67, help="samples per second (default 67)")
    parser.add_argument("--py-spy-nonblocking", action="store_true", help="do not pause the profiled processes")
    parser.add_argument(
        "--phase",
        choices=PHASES,
        default="performance",
        help="performance: raw JetStream, ingress, capacity, end to end (default); hostile: signed hostile "
        "webhook bodies, then a real customer; all: both on one stack; knowledge: the embedding service "
        "(options of its own: --phase knowledge --help)",
    )
    parser.add_argument("--hostile-bodies", type=int, default=10_000, help="hostile bodies to post (default 10000)")
    parser.add_argument("--hostile-concurrency", type=int, default=16, help="hostile bodies in flight (default 16)")
    parser.add_argument("--hostile-seed", type=int, default=1, help="the same seed posts the same bodies")
    args = parser.parse_args(argv)
    if args.json is None:
        args.json = HOSTILE if args.phase == "hostile" else LATEST
    if args.quick:
        args.duration = args.e2e_duration = 5.0
        args.raw_messages = min(args.raw_messages, 10_000)
        args.capacity_duration = min(args.capacity_duration, 3.0)
        args.settle_timeout = min(args.settle_timeout, 60.0)
        args.hostile_bodies = min(args.hostile_bodies, 500)
    if args.rate <= 0 or args.e2e_rate <= 0 or args.duration <= 0 or args.e2e_duration <= 0:
        parser.error("rates and durations must be positive")
    if args.hostile_bodies <= 0 or args.hostile_concurrency <= 0:
        parser.error("--hostile-bodies and --hostile-concurrency must be positive")
    return Options(**vars(args))
