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

Each round downloads the body once per path (direct, nginx, gateway) and body kind
(Content-Length, chunked); medians over ``--runs`` rounds are reported in GB/s (10^9 bytes/s)
with the ratios gateway/nginx and gateway/direct. With ``--read-buffers`` the gateway is
restarted with each ``STREAM_READ_BUFFER`` value and the references are measured again
alongside it. The gateway's VmRSS/VmHWM (``/proc/<pid>/status``) are read before and after.

    .venv/bin/python bench/download_throughput.py --size-mb 1024 --runs 5
    .venv/bin/python bench/download_throughput.py --runs 3 --read-buffers 65536,262144,1048576
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
        if self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

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

    @property
    def gbps(self) -> float:
        """Throughput in GB/s (10^9 bytes per second)."""
        return self.size / self.seconds / GB if self.seconds > 0 else 0.0


class Client:
    """Runs each download in a separate client process: curl, or bench/fetch_client.py."""

    def __init__(self, kind: str, workdir: Path, max_time: float) -> None:
        self.kind = kind
        self._headers_file = workdir / "curl-headers.txt"
        self._max_time = max_time

    def fetch(self, download: Download) -> Sample:
        """Download once and report status, size, time and the run id (if any)."""
        if self.kind == "curl":
            return self._curl(download)
        return self._aiohttp(download)

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
            SHUTDOWN_GRACE_S="5",
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


@dataclass
class BufferResult:
    """Everything measured while one gateway (one STREAM_READ_BUFFER) was running."""

    read_buffer: int
    samples: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {m: {p: [] for p in PATHS} for m in MODES}
    )
    memory: dict[str, dict[str, int]] = field(default_factory=dict)
    rss_per_run_kib: list[int] = field(default_factory=list)

    def median(self, mode: str, path: str) -> float | None:
        """Median GB/s, or None when the path was not measured."""
        values = self.samples[mode][path]
        return statistics.median(values) if values else None


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "n/a"


def _gbps(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "n/a"


def measure_buffer(
    *,
    read_buffer: int,
    args: argparse.Namespace,
    size: int,
    client: Client,
    origin_base: str,
    nginx_base: str | None,
    gw: GatewayEnv,
    root: Path,
    tenant: Tenant | None,
) -> tuple[BufferResult, Tenant]:
    """Start a gateway with ``read_buffer``, measure every path, stop the gateway."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    gateway = spawn(
        f"gateway (STREAM_READ_BUFFER={read_buffer})",
        [*gateway_command(), "serve"],
        root / f"gateway-{read_buffer}.log",
        env=gw.env(GATEWAY_PORT=str(port), STREAM_READ_BUFFER=str(read_buffer)),
    )
    result = BufferResult(read_buffer)
    try:
        wait_for_port(gateway, port, 60)
        if tenant is None:
            tenant = asyncio.run(
                create_tenant(base, gw.admin_token, origin_base, (size, WARM_SIZE))
            )
        result.memory["start"] = memory_kib(gateway.pid)

        def target(path: str, mode: str, nbytes: int) -> Download:
            chunked = "1" if mode == "chunked" else "0"
            query = f"size={nbytes}&chunked={chunked}"
            if path == "direct":
                return Download("GET", f"{origin_base}/bytes?{query}")
            if path == "nginx":
                return Download("GET", f"{nginx_base}/bytes?{query}")
            assert tenant is not None
            agent_id = tenant.agents[(mode, nbytes)]
            return Download(
                "POST",
                f"{base}/api/agents/{agent_id}/runs/trigger-and-download",
                (
                    ("Authorization", f"Bearer {tenant.ingest_key}"),
                    ("Content-Type", "application/json"),
                ),
                '{"input": {"bench": true}}',
            )

        def one(path: str, mode: str, nbytes: int, label: str) -> Sample:
            sample = checked(client, target(path, mode, nbytes), nbytes, label)
            if path == "gateway":
                assert tenant is not None
                verify_run(base, tenant, tenant.agents[(mode, nbytes)], sample, nbytes)
            return sample

        paths = [p for p in PATHS if p != "nginx" or nginx_base is not None]
        for mode in MODES:
            one("gateway", mode, WARM_SIZE, f"warm-up {mode} gateway")
        result.memory["before"] = memory_kib(gateway.pid)
        for _ in range(args.warmup):
            for mode in MODES:
                for path in paths:
                    one(path, mode, size, f"warm-up {mode} {path}")
        for round_no in range(1, args.runs + 1):
            for mode in MODES:
                for path in paths:
                    label = f"rb={read_buffer} run {round_no}/{args.runs} {mode} {path}"
                    sample = one(path, mode, size, label)
                    result.samples[mode][path].append(sample.gbps)
                    if path == "gateway":
                        result.rss_per_run_kib.append(memory_kib(gateway.pid)["VmRSS"])
                    print(
                        f"  [{label:<52}] {sample.gbps:6.3f} GB/s"
                        f"  ({sample.size} B in {sample.seconds:.3f} s)",
                        flush=True,
                    )
        result.memory["after"] = memory_kib(gateway.pid)
    except BenchError:
        print(f"--- last lines of the gateway log ---\n{gateway.log_tail()}", file=sys.stderr)
        raise
    finally:
        gateway.stop()
    return result, tenant


# --------------------------------------------------------------------------- reporting


def report(results: Sequence[BufferResult], args: argparse.Namespace, client: str) -> str:
    """Markdown tables of medians, ratios and memory."""
    size_mib = args.size_mb
    lines = [
        "",
        f"Body {size_mib} MiB, {args.runs} runs per figure (median GB/s, 10^9 B/s), "
        f"client {client}, {os.cpu_count()} CPUs",
        "",
        "| STREAM_READ_BUFFER | body | direct | nginx | gateway | gateway/nginx | gateway/direct |",
        "|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for mode in MODES:
            direct = res.median(mode, "direct")
            nginx = res.median(mode, "nginx")
            gateway = res.median(mode, "gateway")
            lines.append(
                f"| {res.read_buffer} | {mode} | {_gbps(direct)} | {_gbps(nginx)} | "
                f"{_gbps(gateway)} | {_ratio(gateway, nginx)} | {_ratio(gateway, direct)} |"
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
    for res in results:
        mem = {k: v["VmRSS"] / 1024 for k, v in res.memory.items()}
        per_run = res.rss_per_run_kib or [0]
        lines.append(
            f"| {res.read_buffer} | {mem.get('start', 0):.1f} | {mem.get('before', 0):.1f} | "
            f"{mem.get('after', 0):.1f} | {mem.get('after', 0) - mem.get('before', 0):+.1f} | "
            f"{min(per_run) / 1024:.1f}-{max(per_run) / 1024:.1f} | "
            f"{res.memory.get('after', {}).get('VmHWM', 0) / 1024:.1f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def _read_buffers(raw: str) -> list[int]:
    try:
        values = [int(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {raw!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("read buffers must be positive integers")
    return values


def _positive(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
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
        help="STREAM_READ_BUFFER values, one gateway start each (default 262144, the default "
        "setting); e.g. 65536,262144,1048576",
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

    results: list[BufferResult] = []
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
        if nginx_binary is not None:
            nginx, nginx_port = start_nginx(nginx_binary, root, origin_port)
            stack.callback(nginx.stop)
            nginx_base = f"http://127.0.0.1:{nginx_port}"

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

        print(
            f"origin {origin_base}, nginx {nginx_base or 'skipped'}, client {client_kind}, "
            f"body {args.size_mb} MiB, runs {args.runs}, read buffers {args.read_buffers}",
            flush=True,
        )
        tenant: Tenant | None = None
        for read_buffer in args.read_buffers:
            print(f"STREAM_READ_BUFFER={read_buffer}", flush=True)
            result, tenant = measure_buffer(
                read_buffer=read_buffer,
                args=args,
                size=size,
                client=client,
                origin_base=origin_base,
                nginx_base=nginx_base,
                gw=gw,
                root=root,
                tenant=tenant,
            )
            results.append(result)
        if consumer.process.poll() is not None:
            print(f"warning: the consumer exited early:\n{consumer.log_tail()}", file=sys.stderr)

    print(report(results, args, client_kind))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "size_bytes": size,
                    "runs": args.runs,
                    "client": client_kind,
                    "results": [
                        {
                            "read_buffer": r.read_buffer,
                            "gbps": r.samples,
                            "memory_kib": r.memory,
                            "rss_per_run_kib": r.rss_per_run_kib,
                        }
                        for r in results
                    ],
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
