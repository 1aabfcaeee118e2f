"""Trigger-and-download pass-through throughput: the gateway against direct and nginx.

A benchmark, never a test: it prints figures and ratios, and fails only when a download is
wrong (a status other than 200, or a byte count other than the one asked for).

Every party is its own process, all on 127.0.0.1:

- the origin (``bench/origin_server.py``, aiohttp + uvloop) serves ``--size-mb`` MiB from a
  pre-generated in-memory block, with ``Content-Length`` or chunked (256 KiB writes);
- nginx (when installed) proxies to it with ``proxy_buffering off; proxy_buffer_size 256k``,
  one worker, its config and temp paths under a temporary directory;
- the gateway (``agent-gateway serve``) and the store consumer (``agent-gateway consume``) run
  against an embedded PostgreSQL and Redis started under the same temporary directory; an
  organisation, an ingest key and ``file_download`` agents pointing at the origin's webhook are
  created through the admin API, and each download is
  ``POST /api/agents/{id}/runs/trigger-and-download``;
- the client is curl (``-o /dev/null``), or ``bench/fetch_client.py`` when curl is missing.

Each round downloads the body once per path (direct, nginx, each gateway) and body kind
(Content-Length, chunked), in an order rotated every round; medians over ``--runs`` rounds are
reported in GB/s (10^9 bytes/s) with the ratios gateway/nginx and gateway/direct. With
``--read-buffers`` one gateway process is started per ``STREAM_READ_BUFFER`` value and they run
side by side (only one is ever downloading), so that every value is measured in the same rounds
as the references: on a shared VM, hypervisor steal comes and goes, and measuring each value in
its own block of time would compare the neighbours' load instead. Steal and the CPU share of the
origin, the proxy (nginx worker or gateway) and the client are reported for every path;
``--max-steal`` measures a disturbed download again. The gateways' VmRSS/VmHWM
(``/proc/<pid>/status``) are read before and after.

    .venv/bin/python bench/download_throughput.py --size-mb 1024 --runs 5
    .venv/bin/python bench/download_throughput.py --runs 3 --read-buffers 65536,262144,1048576
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp

from gateway.embedded import free_port, stop_process

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
MIB = 1024 * 1024
GB = 1e9
MODES = ("content-length", "chunked")
PATHS = ("direct", "nginx", "gateway")
# The small download that warms each gateway up before its "before" RSS is read.
WARM_SIZE = MIB


class BenchError(RuntimeError):
    """A part of the benchmark could not start, or a download came back wrong."""


# --------------------------------------------------------------------------- processes


@dataclass
class Child:
    """A child process of ours, with its log file, stopped by its PID."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """The child's PID."""
        return self.process.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Signal the child by its PID and wait; kill it if it does not exit in time."""
        stop_process(self.process, sig=sig, timeout=timeout)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the child's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def spawn(
    name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> Child:
    """Start ``argv`` in its own session with stdout/stderr going to ``log_path``."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO_DIR,
            start_new_session=True,
        )
    return Child(name, process, log_path)


def wait_for_port(child: Child, port: int, timeout: float) -> None:
    """Wait (bounded) until ``child`` accepts connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise BenchError(
                f"{child.name} exited with code {child.process.returncode}:\n{child.log_tail()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{child.name} did not listen on {port} within {timeout:g} s")


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB, from ``/proc/<pid>/status``."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds ``pid`` has used so far (``/proc/<pid>/stat``), or None."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after "(comm)": state is field 3, utime field 14, stime field 15.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children_cpu_seconds() -> float:
    """User + system CPU seconds of our reaped children (the client processes)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) clock ticks of all CPUs so far, from the ``cpu`` line of ``/proc/stat``."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guests are in user.
    steal = values[7] if len(values) > 7 else 0
    return steal, sum(values[:8])


def nginx_worker(master_pid: int) -> int | None:
    """The PID of the (single) nginx worker, from ``/proc/<pid>/task/<pid>/children``."""
    try:
        children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


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
            sys.executable,
            str(BENCH_DIR / "fetch_client.py"),
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


# --------------------------------------------------------------------------- nginx


def find_nginx(given: str | None) -> str | None:
    """The nginx binary to use, or None when there is none."""
    if given:
        return given if Path(given).is_file() else None
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None
    )


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{origin_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_buffer_size 256k;
            # Unused with buffering off, but nginx validates them against proxy_buffer_size.
            proxy_buffers 4 256k;
            proxy_busy_buffers_size 256k;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def start_nginx(binary: str, root: Path, origin_port: int) -> tuple[Child, int]:
    """nginx in the foreground (``daemon off``), config and temp paths under ``root``."""
    prefix = root / "nginx"
    prefix.mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, origin_port=origin_port))
    child = spawn(
        "nginx",
        [binary, "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "error.log")],
        root / "nginx.log",
    )
    try:
        wait_for_port(child, port, 15)
    except BenchError:
        child.stop()
        raise
    return child, port


# --------------------------------------------------------------------------- the gateway


@dataclass(frozen=True)
class Backends:
    """The embedded PostgreSQL and Redis."""

    database_url: str
    redis_url: str


def start_backends(root: Path, stack: contextlib.ExitStack) -> Backends:
    """Embedded PostgreSQL (durable=False) and Redis under ``root``, migrated."""
    from gateway.embedded import EmbeddedPostgres, EmbeddedRedis
    from store.migrate import migrate_url

    postgres = EmbeddedPostgres(root / "postgres", durable=False)
    stack.callback(postgres.stop)
    database_url = postgres.start()
    redis = EmbeddedRedis(root / "redis")
    stack.callback(redis.stop)
    redis_url = redis.start()
    asyncio.run(migrate_url(database_url))
    return Backends(database_url, redis_url)


def gateway_command() -> list[str]:
    """``agent-gateway`` from the running interpreter's environment."""
    script = Path(sys.executable).parent / "agent-gateway"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "gateway.cli"]


@dataclass(frozen=True)
class GatewayEnv:
    """What every gateway and consumer process of this run shares."""

    backends: Backends
    secret_key: str
    admin_token: str

    def env(self, **extra: str) -> dict[str, str]:
        """The process environment with the gateway's settings."""
        env = {k: v for k, v in os.environ.items() if k != "PUBLIC_BASE_URL"}
        env.update(
            DATABASE_URL=self.backends.database_url,
            REDIS_URL=self.backends.redis_url,
            SECRET_KEY=self.secret_key,
            ADMIN_TOKEN=self.admin_token,
            GATEWAY_HOST="127.0.0.1",
            # The 5/min trigger bucket would otherwise throttle the benchmark.
            SYNC_RATE_LIMIT="1000000000",
            DRAIN_PRE_STOP_S="0",
            DRAIN_TIMEOUT_S="5",
            # The consumer's /metrics and /healthz are not needed here; keep the port free.
            CONSUMER_PORT="0",
            LOG_LEVEL="INFO",
        )
        env.update(extra)
        return env


@dataclass
class Tenant:
    """The benchmark's organisation: its ingest key and one agent per (body kind, size)."""

    ingest_key: str
    agents: dict[tuple[str, int], int] = field(default_factory=dict)


async def _admin_post(
    session: aiohttp.ClientSession, url: str, token: str, body: Any = None
) -> dict[str, Any]:
    async with session.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as resp:
        text = await resp.text()
        if resp.status != 201:
            raise BenchError(f"POST {url}: HTTP {resp.status} {text}")
        answer: dict[str, Any] = json.loads(text)
        return answer


async def create_tenant(base: str, admin_token: str, origin: str, sizes: Iterable[int]) -> Tenant:
    """An organisation, an ingest key and file_download agents pointing at the origin."""
    async with aiohttp.ClientSession() as session:
        org = await _admin_post(session, f"{base}/admin/orgs", admin_token, {"name": "bench"})
        key = await _admin_post(session, f"{base}/admin/orgs/{org['id']}/keys", admin_token)
        tenant = Tenant(ingest_key=key["key"])
        for size in sorted(set(sizes)):
            for mode in MODES:
                chunked = "1" if mode == "chunked" else "0"
                agent = await _admin_post(
                    session,
                    f"{base}/admin/orgs/{org['id']}/agents",
                    admin_token,
                    {
                        "name": f"bench {mode} {size}",
                        "output_kind": "file_download",
                        "runtime": {
                            "kind": "n8n",
                            "webhook_url": f"{origin}/webhook/bytes?size={size}&chunked={chunked}",
                        },
                        "running_timeout_ms": 600_000,
                    },
                )
                tenant.agents[(mode, size)] = int(agent["id"])
        return tenant


async def wait_for_run(
    base: str, ingest_key: str, agent_id: int, run_id: int, bound_s: float = 15.0
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


@dataclass(frozen=True)
class Endpoints:
    """Where the origin and nginx listen, and the PIDs whose CPU is accounted."""

    origin_base: str
    origin_pid: int
    nginx_base: str | None
    nginx_worker_pid: int | None


@dataclass
class Gateway:
    """One gateway process, started with one STREAM_READ_BUFFER value."""

    read_buffer: int
    child: Child
    base: str
    memory: dict[str, dict[str, int]] = field(default_factory=dict)
    rss_per_run_kib: list[int] = field(default_factory=list)

    @property
    def key(self) -> str:
        """The path key of this gateway in the results."""
        return f"gateway:{self.read_buffer}"


def start_gateways(
    read_buffers: Sequence[int], gw: GatewayEnv, root: Path, stack: contextlib.ExitStack
) -> list[Gateway]:
    """One gateway per read buffer, side by side; each is stopped by its PID at the end."""
    gateways = []
    for read_buffer in read_buffers:
        port = free_port()
        child = spawn(
            f"gateway (STREAM_READ_BUFFER={read_buffer})",
            [*gateway_command(), "serve"],
            root / f"gateway-{read_buffer}.log",
            env=gw.env(GATEWAY_PORT=str(port), STREAM_READ_BUFFER=str(read_buffer)),
        )
        stack.callback(child.stop)
        gateways.append(Gateway(read_buffer, child, f"http://127.0.0.1:{port}"))
    for gateway in gateways:
        wait_for_port(gateway.child, int(gateway.base.rsplit(":", 1)[1]), 60)
    return gateways


@dataclass
class Results:
    """Every measured download, by body kind and path key (direct, nginx, gateway:<n>)."""

    gateways: list[Gateway]
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


class Bench:
    """Downloads through every path, verified, with the CPU and steal around each."""

    def __init__(
        self,
        args: argparse.Namespace,
        client: Client,
        ends: Endpoints,
        gateways: list[Gateway],
        tenant: Tenant,
    ) -> None:
        self.args = args
        self.client = client
        self.ends = ends
        self.gateways = {g.key: g for g in gateways}
        self.tenant = tenant
        self._auth = (
            ("Authorization", f"Bearer {tenant.ingest_key}"),
            ("Content-Type", "application/json"),
        )

    def keys(self) -> list[str]:
        """The path keys measured in every round."""
        refs = ["direct"] + (["nginx"] if self.ends.nginx_base is not None else [])
        return refs + list(self.gateways)

    def _target(self, key: str, mode: str, nbytes: int) -> Download:
        query = f"size={nbytes}&chunked={'1' if mode == 'chunked' else '0'}"
        if key == "direct":
            return Download("GET", f"{self.ends.origin_base}/bytes?{query}")
        if key == "nginx":
            return Download("GET", f"{self.ends.nginx_base}/bytes?{query}")
        agent_id = self.tenant.agents[(mode, nbytes)]
        url = f"{self.gateways[key].base}/api/agents/{agent_id}/runs/trigger-and-download"
        return Download("POST", url, self._auth, '{"input": {"bench": true}}')

    def _proxy_pid(self, key: str) -> int | None:
        if key == "nginx":
            return self.ends.nginx_worker_pid
        gateway = self.gateways.get(key)
        return gateway.child.pid if gateway is not None else None

    def _once(self, key: str, mode: str, nbytes: int, label: str) -> Measured:
        proxy_pid = self._proxy_pid(key)
        origin_before = cpu_seconds(self.ends.origin_pid)
        proxy_before = cpu_seconds(proxy_pid)
        steal_before, total_before = cpu_ticks()
        sample = checked(self.client, self._target(key, mode, nbytes), nbytes, label)
        steal_after, total_after = cpu_ticks()
        origin_after = cpu_seconds(self.ends.origin_pid)
        proxy_after = cpu_seconds(proxy_pid)
        if key in self.gateways:
            agent_id = self.tenant.agents[(mode, nbytes)]
            verify_run(self.gateways[key].base, self.tenant, agent_id, sample, nbytes)
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
            print(f"  [{label:<44}] steal {measured.steal:.0%}: measuring again", flush=True)
            measured = self._once(key, mode, nbytes, label)
            attempt += 1
        return dataclasses.replace(measured, attempts=attempt)

    def run(self, size: int) -> Results:
        """Warm up, read "before" memory, measure ``--runs`` interleaved rounds, read "after"."""
        results = Results(list(self.gateways.values()))
        for gateway in self.gateways.values():
            gateway.memory["start"] = memory_kib(gateway.child.pid)
            for mode in MODES:
                self.download(gateway.key, mode, WARM_SIZE, f"warm-up {mode} {gateway.key}")
            gateway.memory["before"] = memory_kib(gateway.child.pid)
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
                    if key in self.gateways:
                        gateway = self.gateways[key]
                        gateway.rss_per_run_kib.append(memory_kib(gateway.child.pid)["VmRSS"])
                    print(
                        f"  [{label:<44}] {measured.gbps:6.3f} GB/s in {measured.seconds:.3f} s"
                        f"{proxy}  steal {measured.steal:3.0%}",
                        flush=True,
                    )
        for gateway in self.gateways.values():
            gateway.memory["after"] = memory_kib(gateway.child.pid)
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
        "",
        f"Body {args.size_mb} MiB, {args.runs} interleaved rounds (median GB/s, 10^9 B/s; "
        f"gateway min-max), client {client}, {os.cpu_count()} CPUs. direct and nginx are "
        "measured once per round and shared by every gateway row.",
        "",
        "| STREAM_READ_BUFFER | body | direct | nginx | gateway | gateway min-max "
        "| gateway/nginx | gateway/direct |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        direct = results.median(mode, "direct")
        nginx = results.median(mode, "nginx")
        for gateway in results.gateways:
            median = results.median(mode, gateway.key)
            spread = results.gbps(mode, gateway.key) or [0.0]
            lines.append(
                f"| {gateway.read_buffer} | {mode} | {_gbps(direct)} | {_gbps(nginx)} | "
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
    keys = ["direct", "nginx", *(g.key for g in results.gateways)]
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
        "| STREAM_READ_BUFFER | start | before | after | after - before | per-run range | VmHWM |",
        "|---|---|---|---|---|---|---|",
    ]
    for gateway in results.gateways:
        mem = {k: v["VmRSS"] / 1024 for k, v in gateway.memory.items()}
        per_run = gateway.rss_per_run_kib or [0]
        lines.append(
            f"| {gateway.read_buffer} | {mem.get('start', 0):.1f} | {mem.get('before', 0):.1f} | "
            f"{mem.get('after', 0):.1f} | {mem.get('after', 0) - mem.get('before', 0):+.1f} | "
            f"{min(per_run) / 1024:.1f}-{max(per_run) / 1024:.1f} | "
            f"{gateway.memory.get('after', {}).get('VmHWM', 0) / 1024:.1f} |"
        )
    return "\n".join(lines)


def write_json(path: Path, results: Results, args: argparse.Namespace, client: str) -> None:
    """The raw figures, for later comparison."""
    path.write_text(
        json.dumps(
            {
                "size_bytes": args.size_mb * MIB,
                "runs": args.runs,
                "client": client,
                "max_steal": args.max_steal,
                "samples": {
                    mode: {
                        key: [dataclasses.asdict(m) for m in measured]
                        for key, measured in by_key.items()
                    }
                    for mode, by_key in results.samples.items()
                },
                "gateways": [
                    {
                        "read_buffer": g.read_buffer,
                        "memory_kib": g.memory,
                        "rss_per_run_kib": g.rss_per_run_kib,
                    }
                    for g in results.gateways
                ],
            },
            indent=2,
        )
    )


# --------------------------------------------------------------------------- main


def _read_buffers(raw: str) -> list[int]:
    try:
        values = [int(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {raw!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("read buffers must be positive integers")
    return list(dict.fromkeys(values))  # one gateway per distinct value, in the order given


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
        epilog="Example: .venv/bin/python bench/download_throughput.py --size-mb 1024 --runs 5",
    )
    parser.add_argument("--size-mb", type=_positive, default=1024, help="body size in MiB (1024)")
    parser.add_argument("--runs", type=_positive, default=5, help="measured rounds (5)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="unmeasured full-size rounds per gateway (1)"
    )
    parser.add_argument(
        "--read-buffers",
        type=_read_buffers,
        default=[262144],
        metavar="N[,N...]",
        help="STREAM_READ_BUFFER values, one gateway process each, measured in the same rounds "
        "(default 262144, the default setting); e.g. 65536,262144,1048576",
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
    size = args.size_mb * MIB
    client_kind = args.client
    if client_kind == "auto":
        client_kind = "curl" if shutil.which("curl") else "aiohttp"
    elif client_kind == "curl" and not shutil.which("curl"):
        raise BenchError("curl is not installed (use --client aiohttp)")
    nginx_binary = None if args.no_nginx else find_nginx(args.nginx)
    if nginx_binary is None and not args.no_nginx:
        print(
            "nginx: binary not found, skipping the nginx reference "
            "(apt-get update && apt-get install -y nginx)",
            flush=True,
        )

    root = Path(tempfile.mkdtemp(prefix="agw-bench-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, root, True)  # registered first: runs last
        client = Client(client_kind, root, args.max_time)

        origin_port = free_port()
        origin = spawn(
            "origin",
            [sys.executable, str(BENCH_DIR / "origin_server.py"), "--port", str(origin_port)],
            root / "origin.log",
        )
        stack.callback(origin.stop)
        wait_for_port(origin, origin_port, 30)
        origin_base = f"http://127.0.0.1:{origin_port}"

        nginx_base = None
        worker_pid = None
        if nginx_binary is not None:
            nginx, nginx_port = start_nginx(nginx_binary, root, origin_port)
            stack.callback(nginx.stop)
            nginx_base = f"http://127.0.0.1:{nginx_port}"
            worker_pid = nginx_worker(nginx.pid)
        ends = Endpoints(origin_base, origin.pid, nginx_base, worker_pid)

        print("starting embedded PostgreSQL and Redis ...", flush=True)
        gw = GatewayEnv(
            start_backends(root, stack),
            secret_key=secrets.token_urlsafe(32),
            admin_token=secrets.token_urlsafe(24),
        )
        consumer = spawn(
            "consumer", [*gateway_command(), "consume"], root / "consumer.log", gw.env()
        )
        stack.callback(consumer.stop)
        gateways = start_gateways(args.read_buffers, gw, root, stack)
        tenant = asyncio.run(
            create_tenant(gateways[0].base, gw.admin_token, origin_base, (size, WARM_SIZE))
        )
        print(
            f"origin {origin_base}, nginx {nginx_base or 'skipped'}, client {client_kind}, "
            f"body {args.size_mb} MiB, runs {args.runs}, gateways with STREAM_READ_BUFFER "
            f"{', '.join(str(g.read_buffer) for g in gateways)}",
            flush=True,
        )
        try:
            results = Bench(args, client, ends, gateways, tenant).run(size)
        except BenchError:
            for gateway in gateways:
                print(f"--- {gateway.child.name} log ---\n{gateway.child.log_tail()}")
            raise
        if consumer.process.poll() is not None:
            print(f"warning: the consumer exited early:\n{consumer.log_tail()}", file=sys.stderr)

    print(report(results, args, client_kind))
    if args.json is not None:
        write_json(args.json, results, args, client_kind)
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
