"""All the benchmarks in one command: start everything on loopback, measure, print, stop.

    .venv/bin/python -m bench.run                     # the full run (about 10 minutes)
    .venv/bin/python -m bench.run --quick             # smaller and shorter, to try it out
    .venv/bin/python -m bench.run --only small,events --json /tmp/bench.json

Measurements (each against its reference, measured in the same run; see bench/README.md):

1. ``download``  1 GiB through trigger-and-download vs direct vs nginx, Content-Length and
   chunked, gateways with STREAM_SPLICE=0 and =1 side by side.
2. ``memory``    the gateway's RSS for 1 MiB, 1 GiB, a 1 MB/s reader and 500 x 8 MiB at once.
3. ``small``     trigger-and-wait, 64 connections for 10 s, vs a bare aiohttp pass-through.
4. ``sse``       10,000 n8n chunks through execute vs read directly; per-frame delay.
5. ``events``    the rate limiter's decisions/s and p99; the store consumer's apply rate and
   publish→applied lag.
6. ``rolling``   rolling restarts of two replicas behind nginx under load: failed calls.
7. ``trigger``   Trigger.dev runs: from the run's end to the trigger-and-wait answer, polling
   vs the realtime feed, and polls per run.
8. ``waits``     5,000 trigger-and-wait calls held at once (and 1,000) against a runtime that
   answers after 20 s: answers, gateway memory, PostgreSQL load, fan-in.

Everything it starts (PostgreSQL, Redis, the store consumer, the bench runtime, nginx, the
gateways, the pass-through, the client processes) is stopped by PID when it ends, on an error,
on Ctrl-C and on SIGTERM. Targets are printed as met or missed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from bench import (
    download_throughput,
    events,
    held_waits,
    limiter,
    memory,
    rolling,
    small_requests,
    sse,
    trigger_follow,
)
from bench.processes import REPO_DIR, BenchError
from bench.report import Section, promote, render, write_json
from bench.stack import Stack, find_nginx

SECTIONS = ("download", "memory", "small", "sse", "events", "rolling", "trigger", "waits")


@dataclass
class Plan:
    """What every measurement is asked to do."""

    download: argparse.Namespace
    memory: memory.MemoryConfig = field(default_factory=memory.MemoryConfig)
    small: small_requests.SmallConfig = field(default_factory=small_requests.SmallConfig)
    sse: sse.SseConfig = field(default_factory=sse.SseConfig)
    limiter: limiter.LimiterConfig = field(default_factory=limiter.LimiterConfig)
    events: events.EventsConfig = field(default_factory=events.EventsConfig)
    rolling: rolling.RollingConfig = field(default_factory=rolling.RollingConfig)
    trigger: trigger_follow.TriggerConfig = field(default_factory=trigger_follow.TriggerConfig)
    waits: held_waits.WaitsConfig = field(default_factory=held_waits.WaitsConfig)


def make_plan(args: argparse.Namespace) -> Plan:
    """The full run's sizes, or the quick ones, with the command line's overrides."""
    size_mb = args.size_mb or (256 if args.quick else 1024)
    runs = args.runs or (3 if args.quick else 5)
    download = [
        "--size-mb",
        str(size_mb),
        "--runs",
        str(runs),
        "--warmup",
        "0" if args.quick else "1",
        "--splice",
        args.splice,
    ]
    if args.read_buffers:
        download += ["--read-buffers", args.read_buffers]
    if args.max_steal is not None:
        download += ["--max-steal", str(args.max_steal)]
    if args.no_nginx:
        download.append("--no-nginx")
    plan = Plan(download=download_throughput.parse_args(download))
    if args.quick:
        plan.memory = memory.MemoryConfig(
            large_mb=size_mb, slow_seconds=5.0, concurrent=100, settle_s=1.0
        )
        plan.small = small_requests.SmallConfig(duration=3.0, warmup=0.5, single_duration=2.0)
        plan.sse = sse.SseConfig(frames=2000, paced_frames=1000, runs=1)
        plan.limiter = limiter.LimiterConfig(count=5000)
        plan.events = events.EventsConfig(backlog=10_000, seconds=2.0)
        plan.rolling = rolling.config_for(quick=True)
        plan.trigger = trigger_follow.config_for(quick=True)
        plan.waits = held_waits.WaitsConfig(held=1000)
    else:
        plan.memory.large_mb = size_mb
    return plan


def _download(stack: Stack, plan: Plan) -> Section:
    args = plan.download
    section = Section(
        "download",
        f"1. {args.size_mb} MiB download: trigger-and-download vs direct vs nginx",
    )
    results, client = download_throughput.measure(stack, args)
    section.rows = download_throughput.summary_rows(results)
    section.details.append(download_throughput.report(results, args, client))
    if stack.nginx_base is None:
        section.notes.append("nginx: skipped (binary not found); its rows are n/a")
    section.notes.append(
        "STREAM_SPLICE=1 moves the body socket to socket with os.splice (a chunked one between "
        "chunk headers the gateway reads and re-emits); STREAM_SPLICE=0 copies both through "
        "the process."
    )
    section.raw = {"size_bytes": args.size_mb * 1024 * 1024, "runs": args.runs, **results.raw()}
    return section


def _events(stack: Stack, plan: Plan) -> Section:
    section = Section("events", "5. Rate limiter and store consumer")
    limits = limiter.measure(stack, plan.limiter)
    limiter.rows(section, limits)
    consumer = events.measure(stack, plan.events)
    events.rows(section, consumer, plan.events)
    section.raw = {"limiter": limits, "consumer": consumer}
    return section


RUNNERS: dict[str, Callable[[Stack, Plan], Section]] = {
    "download": _download,
    "memory": lambda stack, plan: memory.measure(stack, plan.memory),
    "small": lambda stack, plan: small_requests.measure(stack, plan.small),
    "sse": lambda stack, plan: sse.measure(stack, plan.sse),
    "events": _events,
    "rolling": lambda stack, plan: rolling.measure(stack, plan.rolling),
    "trigger": lambda stack, plan: trigger_follow.measure(stack, plan.trigger),
    "waits": lambda stack, plan: held_waits.measure(stack, plan.waits),
}
TITLES = {
    "download": "1. Download",
    "memory": "2. Memory",
    "small": "3. Small requests",
    "sse": "4. SSE",
    "events": "5. Rate limiter and events",
    "rolling": "6. Rolling restarts behind nginx",
    "trigger": "7. Trigger.dev run following",
    "waits": "8. Held waits",
}


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else "?"


def meta(args: argparse.Namespace, nginx: str | None) -> dict[str, object]:
    """Where and on what the figures were measured."""
    import aiohttp

    try:
        import uvloop

        uvloop_version = uvloop.__version__
    except ImportError:
        uvloop_version = "absent"
    commit = _version(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"])
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "quick": args.quick,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "uvloop": uvloop_version,
        "nginx": _version([nginx, "-v"]) if nginx else "absent",
        "curl": _version(["curl", "--version"]),
    }


def _sections(raw: str) -> list[str]:
    chosen = [s.strip() for s in raw.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(SECTIONS)}")
    return [s for s in SECTIONS if s in chosen]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: .venv/bin/python -m bench.run --quick --only download,small",
    )
    parser.add_argument("--quick", action="store_true", help="smaller, shorter loads")
    parser.add_argument(
        "--only",
        type=_sections,
        default=list(SECTIONS),
        metavar="A,B",
        help=f"measurements to run (default all: {','.join(SECTIONS)})",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=Path("bench-results.json"),
        help="where to write every figure (default ./bench-results.json)",
    )
    parser.add_argument("--size-mb", type=int, help="download size (1024; quick 256)")
    parser.add_argument("--runs", type=int, help="download rounds (5; quick 3)")
    parser.add_argument("--splice", default="0,1", help="STREAM_SPLICE values (0,1)")
    parser.add_argument("--read-buffers", help="STREAM_READ_BUFFER values (default: the default)")
    parser.add_argument("--max-steal", type=float, help="re-measure downloads with more steal")
    parser.add_argument("--nginx", help="nginx binary (default: PATH or /usr/sbin/nginx)")
    parser.add_argument("--no-nginx", action="store_true", help="skip the nginx reference")
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for every gateway started (repeatable)",
    )
    parser.add_argument(
        "--keep-logs",
        type=Path,
        metavar="DIR",
        help="copy every process's log (gateways, consumer, PostgreSQL) into DIR at the end",
    )
    parser.add_argument(
        "--gateway-command",
        help="the agent-gateway executable whose 'serve' is measured (default: this checkout's)",
    )
    return parser.parse_args(argv)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM becomes SystemExit so that every finally block (children, temp dir) runs.
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace) -> int:
    """Start the stack, run the chosen measurements, print and write them, stop everything."""
    plan = make_plan(args)
    nginx = None if args.no_nginx else find_nginx(args.nginx)
    if nginx is None and not args.no_nginx:
        print("nginx: not found, its reference rows are skipped (apt-get install -y nginx)")
    info = meta(args, nginx)
    print(f"bench: {', '.join(args.only)}; {json.dumps(info)}", flush=True)
    sections: list[Section] = []
    started = time.monotonic()
    with contextlib.ExitStack() as exit_stack:
        gateway_argv = args.gateway_command.split() if args.gateway_command else None
        gateway_env = dict(item.split("=", 1) for item in args.gateway_env)
        stack = Stack(
            exit_stack,
            nginx=nginx,
            gateway_argv=gateway_argv,
            gateway_env=gateway_env,
            keep_logs=args.keep_logs,
        )
        stack.start()
        for key in args.only:
            print(f"\n== {TITLES[key]} ==", flush=True)
            t0 = time.monotonic()
            try:
                section = RUNNERS[key](stack, plan)
            except BenchError as exc:
                print(f"{TITLES[key]}: failed: {exc}", file=sys.stderr, flush=True)
                section = Section(key, TITLES[key], skipped=f"failed: {exc}")
            section.seconds = time.monotonic() - t0
            sections.append(section)
            print("\n" + render(section), flush=True)
    info["seconds"] = round(time.monotonic() - started, 1)
    promote(sections)
    print("\n## Results\n")
    print(f"Measured {info['date']} at {info['commit']} ({info['seconds']} s in all).\n")
    for section in sections:
        print(render(section))
    write_json(args.json, sections, info)
    print(f"figures written to {args.json}")
    return 0 if all(s.skipped is None or "failed" not in s.skipped for s in sections) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
