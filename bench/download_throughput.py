"""Trigger-and-download pass-through throughput: the gateway against direct and nginx.

A benchmark, never a test: it prints figures and ratios, and fails only when a download is
wrong (a status other than 200, or a byte count other than the one asked for).

Every party is its own process, all on 127.0.0.1 (see :mod:`bench.stack`):

- the origin (``bench/origin_server.py``, aiohttp + uvloop) serves ``--size-mb`` MiB from a
  pre-generated in-memory block, with ``Content-Length`` or chunked (256 KiB writes);
- nginx (when installed) proxies to it with ``proxy_buffering off; proxy_buffer_size 256k``,
  one worker, its config and temp paths under a temporary directory;
- the gateways (``agent-gateway serve``) and the store consumer (``agent-gateway consume``) run
  against an embedded PostgreSQL and Redis; ``file_download`` agents point at the origin's
  webhook, and each download is ``POST /api/agents/{id}/runs/trigger-and-download``;
- the client is curl (``-o /dev/null``), or ``bench/fetch_client.py`` when curl is missing.

Each round downloads the body once per path (direct, nginx, each gateway) and body kind
(Content-Length, chunked), in an order rotated every round; medians over ``--runs`` rounds are
reported in GB/s (10^9 bytes/s) with the ratios gateway/nginx and gateway/direct. One gateway
process is started per combination of ``--splice`` (``STREAM_SPLICE``) and ``--read-buffers``
(``STREAM_READ_BUFFER``) and they run side by side (only one is ever downloading), so that every
variant is measured in the same rounds as the references: on a shared VM, hypervisor steal
comes and goes, and measuring each variant in its own block of time would compare the
neighbours' load instead. Steal and the CPU share of the origin, the proxy (nginx worker or
gateway) and the client are reported for every path; ``--max-steal`` measures a disturbed
download again. The gateways' VmRSS/VmHWM (``/proc/<pid>/status``) are read before and after.

    .venv/bin/python -m bench.download_throughput --size-mb 1024 --runs 5
    .venv/bin/python -m bench.download_throughput --runs 3 --read-buffers 65536,262144 --splice 0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp

from bench.processes import (
    GB,
    MIB,
    BenchError,
    children_cpu_seconds,
    cpu_seconds,
    cpu_ticks,
    memory_kib,
    python_module,
)
from bench.report import Row, at_least, at_most, ratio
from bench.stack import Gateway, Stack, agent_body, find_nginx

MODES = ("content-length", "chunked")
# The small download that warms each gateway up before its "before" RSS is read.
WARM_SIZE = MIB


# --------------------------------------------------------------------------- the client


@dataclass(frozen=True)
class Download:
    """One HTTP request whose body is downloaded and discarded."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    data: str | None = None


@dataclass(frozen=True)
class Sample:
    """What the client saw."""

    status: int
    size: int
    seconds: float
    run_id: int | None
    client_cpu_s: float = 0.0

    @property
    def gbps(self) -> float:
        """Throughput in GB/s (10^9 bytes per second)."""
        return self.size / self.seconds / GB if self.seconds > 0 else 0.0


class Client:
    """Runs each download in a separate client process: curl, or bench/fetch_client.py."""

    def __init__(self, kind: str, workdir: Path, max_time: float) -> None:
        # The aiohttp client's CPU includes its interpreter start-up; curl's is the transfer.
        self.kind = kind
        self._headers_file = workdir / "curl-headers.txt"
        self._max_time = max_time

    def fetch(self, download: Download) -> Sample:
        """Download once and report status, size, time, the run id (if any) and client CPU."""
        cpu_before = children_cpu_seconds()
        sample = self._curl(download) if self.kind == "curl" else self._aiohttp(download)
        return dataclasses.replace(sample, client_cpu_s=children_cpu_seconds() - cpu_before)

    def _curl(self, download: Download) -> Sample:
        argv = [
            "curl",
            "-s",
            "-S",
            "-o",
            "/dev/null",
            "-D",
            str(self._headers_file),
            "-w",
            "%{http_code} %{size_download} %{time_total}",
            "--max-time",
            f"{self._max_time:g}",
            "--request",
            download.method,
        ]
        for name, value in download.headers:
            argv += ["-H", f"{name}: {value}"]
        if download.data is not None:
            argv += ["--data-binary", download.data]
        argv.append(download.url)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=self._max_time + 30)
        if done.returncode != 0:
            raise BenchError(
                f"curl exited with {done.returncode} for {download.url}: {done.stderr.strip()}"
                f" (stdout: {done.stdout.strip()})"
            )
        status, size, seconds = done.stdout.split()
        run_id = None
        for line in self._headers_file.read_text(errors="replace").splitlines():
            name, _, value = line.partition(":")
            if name.strip().lower() == "x-run-id":
                run_id = int(value.strip())
        return Sample(int(status), int(size), float(seconds), run_id)

    def _aiohttp(self, download: Download) -> Sample:
        argv = [
            *python_module("fetch_client"),
            download.method,
            download.url,
            "--max-time",
            f"{self._max_time:g}",
        ]
        for name, value in download.headers:
            argv += ["--header", f"{name}: {value}"]
        if download.data is not None:
            argv += ["--data", download.data]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=self._max_time + 30)
        if done.returncode != 0:
            raise BenchError(f"fetch_client failed for {download.url}: {done.stderr.strip()}")
        got = json.loads(done.stdout)
        run_id = int(got["run_id"]) if got.get("run_id") else None
        return Sample(int(got["status"]), int(got["size"]), float(got["seconds"]), run_id)


def checked(client: Client, download: Download, expected: int, label: str) -> Sample:
    """Fetch and verify the status and the byte count."""
    sample = client.fetch(download)
    if sample.status != 200 or sample.size != expected:
        raise BenchError(
            f"{label}: HTTP {sample.status}, {sample.size} bytes received, {expected} expected"
        )
    return sample


# --------------------------------------------------------------------------- the tenant


@dataclass
class Tenant:
    """The benchmark's ingest key and one ``file_download`` agent per (body kind, size)."""

    ingest_key: str
    agents: dict[tuple[str, int], int] = field(default_factory=dict)


def create_tenant(stack: Stack, sizes: Sequence[int]) -> Tenant:
    """``file_download`` agents pointing at the origin's webhook, one per body kind and size."""
    keys = [(mode, size) for size in sorted(set(sizes)) for mode in MODES]
    bodies = [
        agent_body(
            f"bench {mode} {size}",
            f"{stack.origin_base}/webhook/bytes?size={size}"
            f"&chunked={'1' if mode == 'chunked' else '0'}",
            "file_download",
        )
        for mode, size in keys
    ]
    ids = stack.create_agents(bodies)
    return Tenant(stack.ingest_key, dict(zip(keys, ids, strict=True)))


async def wait_for_run(
    base: str, ingest_key: str, agent_id: int, run_id: int, bound_s: float = 60.0
) -> dict[str, Any]:
    """Poll the run (bounded) until the consumer has recorded a terminal status."""
    url = f"{base}/api/agents/{agent_id}/runs/{run_id}"
    deadline = time.monotonic() + bound_s
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ingest_key}"}) as s:
        while True:
            async with s.get(url) as resp:
                run: dict[str, Any] = await resp.json()
            if run.get("status") in {"completed", "failed", "cancelled"}:
                return run
            if time.monotonic() > deadline:
                raise BenchError(f"run {run_id} still {run.get('status')} after {bound_s:g} s")
            await asyncio.sleep(0.05)


def verify_run(base: str, tenant: Tenant, agent_id: int, sample: Sample, size: int) -> None:
    """The run the gateway recorded must be completed with the bytes the client received."""
    if sample.run_id is None:
        raise BenchError("the gateway's answer carried no X-Run-Id")
    run = asyncio.run(wait_for_run(base, tenant.ingest_key, agent_id, sample.run_id))
    recorded = (run.get("output_data") or {}).get("sizeBytes")
    if run.get("status") != "completed" or recorded != size:
        raise BenchError(f"run {sample.run_id}: {run.get('status')}, sizeBytes={recorded}")


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Measured:
    """One measured download: throughput and the CPU each process spent on it."""

    gbps: float
    seconds: float
    # CPU seconds over the download; proxy = the nginx worker or the gateway (None: direct).
    origin_cpu_s: float | None
    proxy_cpu_s: float | None
    client_cpu_s: float
    # Share of all CPUs' time the hypervisor gave to someone else during the download.
    steal: float
    attempts: int = 1


@dataclass
class Variant:
    """One gateway process, started with one combination of settings."""

    gateway: Gateway
    memory: dict[str, dict[str, int]] = field(default_factory=dict)
    rss_per_run_kib: list[int] = field(default_factory=list)

    @property
    def key(self) -> str:
        """The path key of this gateway in the results."""
        return f"gateway {self.gateway.name}"


def variants(args: argparse.Namespace) -> list[tuple[str, dict[str, str]]]:
    """(name, settings) of every gateway to start: each splice value by each read buffer."""
    out = []
    for splice in args.splice:
        for read_buffer in args.read_buffers:
            settings = {
                "STREAM_SPLICE": str(splice),
                # The 5/min trigger bucket would otherwise throttle the benchmark; the limiter
                # is still called for every download.
                "SYNC_RATE_LIMIT": "1000000000",
            }
            name = f"splice={splice}"
            if read_buffer:
                settings["STREAM_READ_BUFFER"] = str(read_buffer)
                name += f" rb={read_buffer}"
            out.append((name, settings))
    return out


@dataclass
class Results:
    """Every measured download, by body kind and path key (direct, nginx, gateway ...)."""

    variants: list[Variant]
    samples: dict[str, dict[str, list[Measured]]] = field(
        default_factory=lambda: {m: {} for m in MODES}
    )

    def gbps(self, mode: str, key: str) -> list[float]:
        """Every measured GB/s of ``key`` for ``mode``."""
        return [m.gbps for m in self.samples[mode].get(key, [])]

    def median(self, mode: str, key: str) -> float | None:
        """Median GB/s, or None when the path was not measured."""
        values = self.gbps(mode, key)
        return statistics.median(values) if values else None

    def steal(self, mode: str, key: str) -> float | None:
        """Median steal share during the measured downloads of ``key``."""
        values = [m.steal for m in self.samples[mode].get(key, [])]
        return statistics.median(values) if values else None

    def retries(self) -> int:
        """Downloads measured again because of steal."""
        return sum(m.attempts - 1 for by in self.samples.values() for ms in by.values() for m in ms)

    def proxy_cpu_per_gb(self, mode: str, key: str) -> float | None:
        """Median CPU seconds the proxy spent per GB moved: throughput-independent of steal."""
        values = [
            m.proxy_cpu_s / (m.gbps * m.seconds)
            for m in self.samples[mode].get(key, [])
            if m.proxy_cpu_s is not None and m.gbps > 0
        ]
        return statistics.median(values) if values else None

    def cpu_share(self, mode: str, key: str, who: str) -> float | None:
        """Median share of one core ``who`` (origin, proxy, client) used during downloads."""
        shares = []
        for m in self.samples[mode].get(key, []):
            cpu = {"origin": m.origin_cpu_s, "proxy": m.proxy_cpu_s, "client": m.client_cpu_s}
            value = cpu[who]
            if value is not None and m.seconds > 0:
                shares.append(value / m.seconds)
        return statistics.median(shares) if shares else None

    def raw(self) -> dict[str, Any]:
        """Every sample and memory reading, for the JSON file."""
        return {
            "samples": {
                mode: {
                    key: [dataclasses.asdict(m) for m in measured]
                    for key, measured in by_key.items()
                }
                for mode, by_key in self.samples.items()
            },
            "gateways": [
                {
                    "name": v.gateway.name,
                    "settings": v.gateway.settings,
                    "memory_kib": v.memory,
                    "rss_per_run_kib": v.rss_per_run_kib,
                }
                for v in self.variants
            ],
        }


class Bench:
    """Downloads through every path, verified, with the CPU and steal around each."""

    def __init__(
        self,
        args: argparse.Namespace,
        client: Client,
        stack: Stack,
        variants: list[Variant],
        tenant: Tenant,
    ) -> None:
        self.args = args
        self.client = client
        self.stack = stack
        self.variants = {v.key: v for v in variants}
        self.tenant = tenant
        self._auth = (
            ("Authorization", f"Bearer {tenant.ingest_key}"),
            ("Content-Type", "application/json"),
        )

    def keys(self) -> list[str]:
        """The path keys measured in every round."""
        refs = ["direct"] + (["nginx"] if self.stack.nginx_base is not None else [])
        return refs + list(self.variants)

    def _target(self, key: str, mode: str, nbytes: int) -> Download:
        query = f"size={nbytes}&chunked={'1' if mode == 'chunked' else '0'}"
        if key == "direct":
            return Download("GET", f"{self.stack.origin_base}/bytes?{query}")
        if key == "nginx":
            return Download("GET", f"{self.stack.nginx_base}/bytes?{query}")
        agent_id = self.tenant.agents[(mode, nbytes)]
        url = f"{self.variants[key].gateway.base}/api/agents/{agent_id}/runs/trigger-and-download"
        return Download("POST", url, self._auth, '{"input": {"bench": true}}')

    def _proxy_pid(self, key: str) -> int | None:
        if key == "nginx":
            return self.stack.nginx_worker_pid
        variant = self.variants.get(key)
        return variant.gateway.pid if variant is not None else None

    def _once(self, key: str, mode: str, nbytes: int, label: str) -> Measured:
        origin_pid = self.stack.origin.pid if self.stack.origin is not None else None
        proxy_pid = self._proxy_pid(key)
        origin_before = cpu_seconds(origin_pid)
        proxy_before = cpu_seconds(proxy_pid)
        steal_before, total_before = cpu_ticks()
        sample = checked(self.client, self._target(key, mode, nbytes), nbytes, label)
        steal_after, total_after = cpu_ticks()
        origin_after = cpu_seconds(origin_pid)
        proxy_after = cpu_seconds(proxy_pid)
        if key in self.variants:
            agent_id = self.tenant.agents[(mode, nbytes)]
            verify_run(self.variants[key].gateway.base, self.tenant, agent_id, sample, nbytes)
        return Measured(
            gbps=sample.gbps,
            seconds=sample.seconds,
            origin_cpu_s=_delta(origin_before, origin_after),
            proxy_cpu_s=_delta(proxy_before, proxy_after),
            client_cpu_s=sample.client_cpu_s,
            steal=(steal_after - steal_before) / max(1, total_after - total_before),
        )

    def download(self, key: str, mode: str, nbytes: int, label: str) -> Measured:
        """One verified download; with --max-steal, measured again (bounded) when disturbed."""
        measured = self._once(key, mode, nbytes, label)
        attempt = 1
        while (
            self.args.max_steal is not None
            and measured.steal > self.args.max_steal
            and attempt < self.args.steal_attempts
        ):
            print(f"  [{label:<48}] steal {measured.steal:.0%}: measuring again", flush=True)
            measured = self._once(key, mode, nbytes, label)
            attempt += 1
        return dataclasses.replace(measured, attempts=attempt)

    def run(self, size: int) -> Results:
        """Warm up, read "before" memory, measure ``--runs`` interleaved rounds, read "after"."""
        results = Results(list(self.variants.values()))
        for variant in self.variants.values():
            variant.memory["start"] = memory_kib(variant.gateway.pid)
            for mode in MODES:
                self.download(variant.key, mode, WARM_SIZE, f"warm-up {mode} {variant.key}")
            variant.memory["before"] = memory_kib(variant.gateway.pid)
        keys = self.keys()
        for _ in range(self.args.warmup):
            for mode in MODES:
                for key in keys:
                    self.download(key, mode, size, f"warm-up {mode} {key}")
        for round_no in range(self.args.runs):
            # Rotate the order every round so that no path always comes first or last.
            shift = round_no % len(keys)
            order = keys[shift:] + keys[:shift]
            for mode in MODES:
                for key in order:
                    label = f"run {round_no + 1}/{self.args.runs} {mode} {key}"
                    measured = self.download(key, mode, size, label)
                    results.samples[mode].setdefault(key, []).append(measured)
                    proxy = ""
                    if measured.proxy_cpu_s is not None and measured.seconds > 0:
                        proxy = f"  proxy CPU {measured.proxy_cpu_s / measured.seconds:4.0%}"
                    if key in self.variants:
                        variant = self.variants[key]
                        variant.rss_per_run_kib.append(memory_kib(variant.gateway.pid)["VmRSS"])
                    print(
                        f"  [{label:<48}] {measured.gbps:6.3f} GB/s in {measured.seconds:.3f} s"
                        f"{proxy}  steal {measured.steal:3.0%}",
                        flush=True,
                    )
        for variant in self.variants.values():
            variant.memory["after"] = memory_kib(variant.gateway.pid)
        return results


def _delta(before: float | None, after: float | None) -> float | None:
    return after - before if before is not None and after is not None else None


# --------------------------------------------------------------------------- reporting

PROCESSES = ("origin", "proxy", "client")


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "n/a"


def _gbps(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "n/a"


def _share(value: float | None) -> str:
    return f"{value * 100:.0f} %" if value is not None else "-"


def report(results: Results, args: argparse.Namespace, client: str) -> str:
    """Markdown tables of medians, ratios, CPU and memory."""
    lines = [
        f"Body {args.size_mb} MiB, {args.runs} interleaved rounds (median GB/s, 10^9 B/s; "
        f"gateway min-max), client {client}, {os.cpu_count()} CPUs. direct and nginx are "
        "measured once per round and shared by every gateway row.",
        "",
        "| gateway | body | direct | nginx | gateway | gateway min-max "
        "| gateway/nginx | gateway/direct |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        direct = results.median(mode, "direct")
        nginx = results.median(mode, "nginx")
        for variant in results.variants:
            median = results.median(mode, variant.key)
            spread = results.gbps(mode, variant.key) or [0.0]
            lines.append(
                f"| {variant.gateway.name} | {mode} | {_gbps(direct)} | {_gbps(nginx)} | "
                f"{_gbps(median)} | {min(spread):.2f}-{max(spread):.2f} | "
                f"{_ratio(median, nginx)} | {_ratio(median, direct)} |"
            )
    lines += [
        "",
        "CPU during the downloads (median share of one core: origin / proxy / client; the proxy "
        "is the nginx worker or the gateway process), the proxy's median CPU seconds per GB "
        "moved, and median hypervisor steal (share of all CPUs' time)",
        "",
        "| path | body | origin / proxy / client | proxy CPU s/GB | steal |",
        "|---|---|---|---|---|",
    ]
    keys = ["direct", "nginx", *(v.key for v in results.variants)]
    for mode in MODES:
        for key in keys:
            if not results.samples[mode].get(key):
                continue
            shares = " / ".join(_share(results.cpu_share(mode, key, who)) for who in PROCESSES)
            per_gb = results.proxy_cpu_per_gb(mode, key)
            lines.append(
                f"| {key} | {mode} | {shares} | {'-' if per_gb is None else f'{per_gb:.2f}'} | "
                f"{_share(results.steal(mode, key))} |"
            )
    if args.max_steal is not None:
        lines.append(
            f"\n{results.retries()} download(s) measured again for steal over "
            f"{args.max_steal:.0%} (at most {args.steal_attempts} attempts each)."
        )
    lines += [
        "",
        "Gateway memory (MiB): VmRSS at start, after a 1 MiB warm-up download per body kind "
        "(before), after all downloads (after); VmRSS range after each measured download; "
        "VmHWM (peak) at the end.",
        "",
        "| gateway | start | before | after | after - before | per-run range | VmHWM |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant in results.variants:
        mem = {k: v["VmRSS"] / 1024 for k, v in variant.memory.items()}
        per_run = variant.rss_per_run_kib or [0]
        lines.append(
            f"| {variant.gateway.name} | {mem.get('start', 0):.1f} | {mem.get('before', 0):.1f} "
            f"| {mem.get('after', 0):.1f} | {mem.get('after', 0) - mem.get('before', 0):+.1f} | "
            f"{min(per_run) / 1024:.1f}-{max(per_run) / 1024:.1f} | "
            f"{variant.memory.get('after', {}).get('VmHWM', 0) / 1024:.1f} |"
        )
    return "\n".join(lines)


def summary_rows(results: Results) -> list[Row]:
    """The issue's targets for every gateway variant and body kind."""
    rows = []
    for mode in MODES:
        direct = results.median(mode, "direct")
        nginx = results.median(mode, "nginx")
        for variant in results.variants:
            median = results.median(mode, variant.key)
            spread = results.gbps(mode, variant.key) or [0.0]
            figure = f"{_gbps(median)} GB/s ({min(spread):.2f}-{max(spread):.2f})"
            what = f"{mode}, {variant.gateway.name}"
            values = {"gateway_gbps": median, "nginx_gbps": nginx, "direct_gbps": direct}
            vs_nginx = ratio(median, nginx)
            rows.append(
                Row(
                    what,
                    figure,
                    f"nginx {_gbps(nginx)} GB/s",
                    vs_nginx,
                    "≥ 0.8x nginx (aim 1.0x)",
                    at_least(vs_nginx, 0.8),
                    values,
                )
            )
            vs_direct = ratio(median, direct)
            rows.append(
                Row(
                    what,
                    figure,
                    f"direct {_gbps(direct)} GB/s",
                    vs_direct,
                    "≥ 0.4x direct (aim 0.5x)",
                    at_least(vs_direct, 0.4),
                    values,
                )
            )
            if variant.gateway.settings.get("STREAM_SPLICE") != "1":
                continue
            if mode == "content-length":
                rows.append(
                    Row(
                        what,
                        figure,
                        f"direct {_gbps(direct)} GB/s",
                        vs_direct,
                        "stretch (splice): ≥ 0.8x direct",
                        at_least(vs_direct, 0.8),
                        values,
                    )
                )
            # The byte-path issue's targets: past nginx with splicing on, on both body kinds.
            bound = 1.2 if mode == "content-length" else 1.0
            rows.append(
                Row(
                    what,
                    figure,
                    f"nginx {_gbps(nginx)} GB/s",
                    vs_nginx,
                    f"splice: ≥ {bound:g}x nginx",
                    at_least(vs_nginx, bound),
                    values,
                )
            )
            if mode == "chunked":
                own = results.proxy_cpu_per_gb(mode, variant.key)
                theirs = results.proxy_cpu_per_gb(mode, "nginx")
                rows.append(
                    Row(
                        f"{what}: proxy CPU s/GB",
                        "n/a" if own is None else f"{own:.2f}",
                        "nginx n/a" if theirs is None else f"nginx {theirs:.2f}",
                        ratio(own, theirs),
                        "splice: ≤ nginx's CPU/GB",
                        None if theirs is None else at_most(own, theirs),
                        {"gateway_cpu_s_per_gb": own, "nginx_cpu_s_per_gb": theirs},
                    )
                )
    return rows


# --------------------------------------------------------------------------- running


def choose_client(kind: str) -> str:
    """curl when asked or found, else the aiohttp fetch client."""
    if kind == "auto":
        return "curl" if shutil.which("curl") else "aiohttp"
    if kind == "curl" and not shutil.which("curl"):
        raise BenchError("curl is not installed (use --client aiohttp)")
    return kind


def measure(stack: Stack, args: argparse.Namespace) -> tuple[Results, str]:
    """Start nginx and the gateway variants on a started stack, measure, stop the gateways."""
    client_kind = choose_client(args.client)
    if not args.no_nginx and not stack.start_nginx():
        print(
            "nginx: binary not found, skipping the nginx reference "
            "(apt-get update && apt-get install -y nginx)",
            flush=True,
        )
    size = args.size_mb * MIB
    tenant = create_tenant(stack, (size, WARM_SIZE))
    gateways = stack.start_gateways(variants(args))
    print(
        f"download: origin {stack.origin_base}, nginx {stack.nginx_base or 'skipped'}, client "
        f"{client_kind}, body {args.size_mb} MiB, runs {args.runs}, gateways "
        f"{', '.join(g.name for g in gateways)}",
        flush=True,
    )
    client = Client(client_kind, stack.root, args.max_time)
    try:
        results = Bench(args, client, stack, [Variant(g) for g in gateways], tenant).run(size)
    except BenchError:
        for gateway in gateways:
            print(f"--- {gateway.child.name} log ---\n{gateway.child.log_tail()}")
        raise
    finally:
        for gateway in gateways:
            gateway.child.stop()
    return results, client_kind


def _read_buffers(raw: str) -> list[int]:
    try:
        values = [int(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {raw!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("read buffers must be positive integers (0: default)")
    return list(dict.fromkeys(values))  # one gateway per distinct value, in the order given


def _splices(raw: str) -> list[int]:
    values = [v.strip() for v in raw.split(",") if v.strip()]
    if not values or any(v not in ("0", "1") for v in values):
        raise argparse.ArgumentTypeError("splice values are 0 and/or 1")
    return [int(v) for v in dict.fromkeys(values)]


def _positive(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _fraction(raw: str) -> float:
    value = float(raw)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        epilog="Example: .venv/bin/python -m bench.download_throughput --size-mb 1024 --runs 5",
    )
    parser.add_argument("--size-mb", type=_positive, default=1024, help="body size in MiB (1024)")
    parser.add_argument("--runs", type=_positive, default=5, help="measured rounds (5)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="unmeasured full-size rounds per gateway (1)"
    )
    parser.add_argument(
        "--splice",
        type=_splices,
        default=[0, 1],
        metavar="0,1",
        help="STREAM_SPLICE values, one gateway process each (default 0,1)",
    )
    parser.add_argument(
        "--read-buffers",
        type=_read_buffers,
        default=[0],
        metavar="N[,N...]",
        help="STREAM_READ_BUFFER values, one gateway process each, measured in the same rounds "
        "(default 0: the gateway's own default); e.g. 65536,262144,1048576",
    )
    parser.add_argument(
        "--client",
        choices=("auto", "curl", "aiohttp"),
        default="auto",
        help="download client process: curl, or bench/fetch_client.py (auto: curl if found)",
    )
    parser.add_argument("--nginx", help="nginx binary (default: found on PATH or in /usr/sbin)")
    parser.add_argument("--no-nginx", action="store_true", help="skip the nginx reference")
    parser.add_argument(
        "--max-time", type=float, default=600.0, help="upper bound per download in seconds"
    )
    parser.add_argument(
        "--max-steal",
        type=_fraction,
        help="measure a download again when hypervisor steal during it exceeds this share of "
        "all CPUs' time (e.g. 0.1); off by default, steal is always reported",
    )
    parser.add_argument(
        "--steal-attempts", type=_positive, default=3, help="attempts per download (3)"
    )
    parser.add_argument("--json", type=Path, help="also write the raw figures to this file")
    return parser.parse_args(argv)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # Turn SIGTERM into SystemExit so that every finally block (children, temp dir) runs.
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace) -> int:
    """Start everything, measure, print, stop everything."""
    with contextlib.ExitStack() as exit_stack:
        stack = Stack(exit_stack, nginx=None if args.no_nginx else find_nginx(args.nginx))
        stack.start()
        results, client_kind = measure(stack, args)
        if stack.consumer is not None and not stack.consumer.alive():
            print(f"warning: the consumer exited early:\n{stack.consumer.log_tail()}")
    print()
    print(report(results, args, client_kind))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "size_bytes": args.size_mb * MIB,
                    "runs": args.runs,
                    "client": client_kind,
                    "max_steal": args.max_steal,
                    **results.raw(),
                },
                indent=2,
            )
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(args)
    except BenchError as exc:
        print(f"download_throughput: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
