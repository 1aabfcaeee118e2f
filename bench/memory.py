"""Memory of the gateway process while it streams: one small, one large, a slow reader, many.

A fresh gateway (default settings) is warmed up with a few small downloads; its VmRSS then is
"idle". For each scenario the peak (VmHWM, reset to the current RSS through
``/proc/<pid>/clear_refs`` before the scenario starts, and also sampled every 50 ms) and the
VmRSS a moment after the scenario ended are read from ``/proc/<pid>/status``:

- a 1 MiB and a 1 GiB download (curl);
- a reader limited to 1 MB/s (``bench/loadgen.py slow``) on a 1 GiB body for a bounded time,
  then leaving, once with Content-Length and once chunked (both spliced with the default
  settings: the chunked one has its chunk headers read by the gateway).
  How far the gateway reads ahead of it is the bytes it has read from sockets minus the bytes
  it has written to sockets (``rchar - wchar`` of ``/proc/<pid>/io``, sampled while the reader
  reads); the origin's own count of bytes written, less what the reader consumed, is shown
  beside it (that one also holds the kernel's socket and pipe buffers);
- ``--concurrent`` downloads of 8 MiB at once, spread over agents so the 5/min bucket never
  refuses one.
"""

from __future__ import annotations

import math
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.processes import MIB, BenchError, io_bytes, memory_kib, python_module, reset_peak
from bench.report import Row, Section, at_most
from bench.stack import Gateway, Stack, agent_body, run_json

# The gateway's default STREAM_READ_BUFFER (gateway/settings.py): aiohttp pauses reading from
# the runtime once more than twice this is buffered.
DEFAULT_READ_BUFFER = 64 * 1024
# The most one socket read brings in under uvloop (its receive buffer), whatever is buffered.
UVLOOP_READ = 256_000
# The transport's write buffer high-water mark: a write waits for the caller once it is above.
WRITE_HIGH_WATER = 64 * 1024
# What the gateway may hold for one stream: the buffered bytes (up to the pause threshold plus
# the read that crossed it), the chunk in hand (at most as much again) and the write buffer.
STREAM_BUFFERS = 2 * (2 * DEFAULT_READ_BUFFER + UVLOOP_READ) + WRITE_HIGH_WATER


@dataclass
class MemoryConfig:
    """How much to load the gateway."""

    large_mb: int = 1024
    slow_rate: float = 1_000_000.0
    slow_seconds: float = 15.0
    concurrent: int = 500
    concurrent_mb: int = 8
    settle_s: float = 2.0


@dataclass
class Scenario:
    """What one scenario did to the gateway's memory (MiB)."""

    name: str
    peak: float
    after: float
    samples: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class Sampler:
    """Samples a process's VmRSS (and optionally more) every ``interval`` s in a thread."""

    def __init__(
        self, pid: int, interval: float = 0.05, probe: Callable[[], None] | None = None
    ) -> None:
        self._pid = pid
        self._interval = interval
        self._probe = probe
        self._stop = threading.Event()
        self.rss: list[float] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.rss.append(memory_kib(self._pid)["VmRSS"] / 1024)
                if self._probe is not None:
                    self._probe()
            except OSError:
                return
            self._stop.wait(self._interval)


def _curl(url: str, headers: list[str], data: str) -> tuple[int, int]:
    argv = ["curl", "-s", "-S", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"]
    for header in headers:
        argv += ["-H", header]
    argv += ["--data-binary", data, url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise BenchError(f"curl {url}: {done.stderr.strip()}")
    status, size = done.stdout.split()
    return int(status), int(size)


class MemoryBench:
    """The scenarios against one fresh gateway."""

    def __init__(self, stack: Stack, cfg: MemoryConfig) -> None:
        self.stack = stack
        self.cfg = cfg
        self.gateway: Gateway | None = None
        self.idle = 0.0
        self._agents: dict[str, list[int]] = {}

    @property
    def pid(self) -> int:
        """The gateway's PID."""
        if self.gateway is None:
            raise BenchError("no gateway")
        return self.gateway.pid

    def _url(self, agent_id: int) -> str:
        assert self.gateway is not None
        return f"{self.gateway.base}/api/agents/{agent_id}/runs/trigger-and-download"

    def setup(self) -> None:
        """Agents for every scenario, then a fresh gateway, warmed up."""
        origin = self.stack.origin_base
        large = self.cfg.large_mb * MIB
        specs = {
            "small": (f"{origin}/webhook/bytes?size={MIB}", 4),
            "small-chunked": (f"{origin}/webhook/bytes?size={MIB}&chunked=1", 2),
            "large": (f"{origin}/webhook/bytes?size={large}", 1),
            "slow": (f"{origin}/webhook/bytes?size={large}&tag=slow-cl", 1),
            "slow-chunked": (f"{origin}/webhook/bytes?size={large}&chunked=1&tag=slow-ch", 1),
            "concurrent": (
                f"{origin}/webhook/bytes?size={self.cfg.concurrent_mb * MIB}",
                # The 5/min bucket holds 5 tokens per agent: agents enough for two rounds.
                2 * math.ceil(self.cfg.concurrent / 4),
            ),
        }
        for name, (url, count) in specs.items():
            body = agent_body(f"memory {name}", url, "file_download")
            self._agents[name] = self.stack.clone_agents(body, count)
        self.gateway = self.stack.start_gateway("memory")
        for name in ("small", "small-chunked"):
            for agent_id in self._agents[name][:2]:
                self._download(agent_id, MIB)
        time.sleep(self.cfg.settle_s)
        self.idle = memory_kib(self.pid)["VmRSS"] / 1024

    def _download(self, agent_id: int, expected: int) -> None:
        status, size = _curl(self._url(agent_id), self.stack.auth_headers(), "{}")
        if status != 200 or size != expected:
            raise BenchError(f"download: HTTP {status}, {size} bytes, {expected} expected")

    def _scenario(
        self, name: str, work: Callable[[], dict[str, Any]], probe: Any = None
    ) -> Scenario:
        reset = reset_peak(self.pid)
        with Sampler(self.pid, probe=probe) as sampler:
            extra = work()
        peak_hwm = memory_kib(self.pid)["VmHWM"] / 1024 if reset else 0.0
        time.sleep(self.cfg.settle_s)
        after = memory_kib(self.pid)["VmRSS"] / 1024
        peak = max([peak_hwm, *sampler.rss])
        print(f"  [memory {name:<28}] peak {peak:.1f} MiB, after {after:.1f} MiB", flush=True)
        return Scenario(name, peak, after, sampler.rss, extra)

    def small(self) -> Scenario:
        """One 1 MiB download."""
        agent_id = self._agents["small"][2]
        return self._scenario("1 MiB download", lambda: self._download(agent_id, MIB) or {})

    def large(self) -> Scenario:
        """One large download."""
        size = self.cfg.large_mb * MIB
        agent_id = self._agents["large"][0]
        label = f"{self.cfg.large_mb} MiB download"
        return self._scenario(label, lambda: self._download(agent_id, size) or {})

    def slow(self, *, chunked: bool) -> Scenario:
        """A reader at ``slow_rate`` for ``slow_seconds``, then gone."""
        agent_id = self._agents["slow-chunked" if chunked else "slow"][0]
        tag = "slow-ch" if chunked else "slow-cl"
        rchar0, wchar0 = io_bytes(self.pid)
        held: list[int] = []

        def probe() -> None:
            rchar, wchar = io_bytes(self.pid)
            held.append((rchar - rchar0) - (wchar - wchar0))

        def work() -> dict[str, Any]:
            result = run_json(
                [
                    *python_module("loadgen"),
                    "slow",
                    "--url",
                    self._url(agent_id),
                    *[arg for h in self.stack.auth_headers() for arg in ("--header", h)],
                    "--body",
                    "{}",
                    "--rate",
                    str(self.cfg.slow_rate),
                    "--seconds",
                    str(self.cfg.slow_seconds),
                    "--sent-url",
                    f"{self.stack.origin_base}/sent?tag={tag}",
                ],
                timeout=self.cfg.slow_seconds + 120,
                what="slow reader",
            )
            if result["status"] != 200:
                raise BenchError(f"slow reader: HTTP {result['status']}")
            return result

        kind = "chunked" if chunked else "Content-Length"
        label = f"reader at {self.cfg.slow_rate / 1e6:g} MB/s, {kind}"
        scenario = self._scenario(label, work, probe)
        # Readings before the first byte reached the reader say nothing about read-ahead.
        scenario.extra["gateway_held_bytes"] = held
        return scenario

    def concurrent(self, again: bool = False) -> Scenario:
        """``concurrent`` downloads of ``concurrent_mb`` MiB at once."""
        agents = self._agents["concurrent"]
        half = len(agents) // 2
        ids_file = self.stack.write_ids(
            f"memory-concurrent-{int(again)}", agents[half:] if again else agents[:half]
        )
        assert self.gateway is not None
        expected = self.cfg.concurrent_mb * MIB

        def work() -> dict[str, Any]:
            result = run_json(
                [
                    *python_module("loadgen"),
                    "downloads",
                    "--url",
                    f"{self.gateway.base}/api/agents/{{id}}/runs/trigger-and-download",
                    "--ids",
                    str(ids_file),
                    *[arg for h in self.stack.auth_headers() for arg in ("--header", h)],
                    "--body",
                    "{}",
                    "--count",
                    str(self.cfg.concurrent),
                    "--expect-bytes",
                    str(expected),
                    "--timeout",
                    "600",
                ],
                timeout=900,
                what="concurrent downloads",
            )
            if result["ok"] != self.cfg.concurrent:
                raise BenchError(f"concurrent downloads: {result['failures']}")
            return result

        label = f"{self.cfg.concurrent} x {self.cfg.concurrent_mb} MiB at once"
        return self._scenario(label + (", again" if again else ""), work)


def measure(stack: Stack, cfg: MemoryConfig) -> Section:
    """Run every scenario and compare each with the idle RSS."""
    section = Section("memory", "2. Gateway memory (RSS, MiB)")
    bench = MemoryBench(stack, cfg)
    try:
        bench.setup()
        scenarios = [
            bench.small(),
            bench.large(),
            bench.slow(chunked=False),
            bench.slow(chunked=True),
            bench.concurrent(),
            # The same again: memory reused (not leaked) stays where the first round left it.
            bench.concurrent(again=True),
        ]
    finally:
        if bench.gateway is not None:
            bench.gateway.child.stop()
    idle = bench.idle
    bounds = [None, 16.0, 16.0, 16.0, 256.0, 256.0]
    for scenario, bound in zip(scenarios, bounds, strict=True):
        growth = scenario.peak - idle
        section.add(
            Row(
                f"peak: {scenario.name}",
                f"{scenario.peak:.1f} ({growth:+.1f})",
                f"idle {idle:.1f}",
                None,
                "-" if bound is None else f"≤ idle + {bound:g} MiB",
                None if bound is None else at_most(growth, bound),
                {"peak_mib": scenario.peak, "idle_mib": idle},
            )
        )
    for scenario in scenarios:
        back = scenario.after - idle
        section.add(
            Row(
                f"after: {scenario.name}",
                f"{scenario.after:.1f} ({back:+.1f})",
                f"idle {idle:.1f}",
                None,
                "idle ± 8 MiB",
                at_most(abs(back), 8.0),
                {"after_mib": scenario.after, "idle_mib": idle},
            )
        )
    bound = STREAM_BUFFERS
    for slow in scenarios[2:4]:
        held = slow.extra.get("gateway_held_bytes") or [0]
        consumed = int(slow.extra.get("consumed", 0))
        origin_sent = slow.extra.get("origin_sent")
        ahead = None if origin_sent is None else int(origin_sent) - consumed
        section.add(
            Row(
                f"most bytes held in the gateway: {slow.name}",
                f"{max(held) / 1024:.0f} KiB",
                "-" if ahead is None else f"origin ahead of reader {ahead / MIB:.1f} MiB",
                None,
                f"≤ its buffers ({bound // 1024} KiB)",
                at_most(max(held), bound),
                {"held_max": max(held), "origin_ahead": ahead, "consumed": consumed},
            )
        )
    slow = scenarios[3]
    consumed = int(slow.extra.get("consumed", 0))
    section.notes += [
        f"The slow reader consumed {consumed / 1e6:.1f} MB in {slow.extra.get('seconds', 0):.1f} s "
        f"({slow.extra.get('rate', 0) / 1e6:.2f} MB/s). 'Held in the gateway' is rchar - wchar "
        "of /proc/<pid>/io during the read (bytes read from sockets and not yet written). Its "
        "buffers: reading pauses above 2 x STREAM_READ_BUFFER, but one uvloop read (up to "
        "256,000 B) may cross that; the chunk in hand is at most as much again; the "
        "transport's write buffer holds up to 64 KiB. 'Origin ahead' also counts the "
        "kernel's socket buffers on both hops and the reader's own buffer. With STREAM_SPLICE "
        "on, a body moves through a kernel pipe and never reaches the gateway's own memory "
        "(a chunked one but for its chunk headers and the few bytes read with them): "
        "rchar - wchar stays near 0 and only 'origin ahead' says how far it got.",
        f"{cfg.concurrent} concurrent downloads took "
        f"{scenarios[4].extra.get('seconds', 0):.1f} s "
        f"({scenarios[4].extra.get('bytes', 0) / 1e9:.2f} GB). The second round shows whether "
        "memory kept after the first is reused (about the same 'after') or grows (a leak).",
    ]
    section.raw = {
        "idle_mib": idle,
        "config": cfg.__dict__,
        "scenarios": [
            {
                "name": s.name,
                "peak_mib": s.peak,
                "after_mib": s.after,
                "rss_samples_mib": s.samples[:: max(1, len(s.samples) // 400)],
                "extra": {k: v for k, v in s.extra.items() if k != "gateway_held_bytes"},
            }
            for s in scenarios
        ],
        "gateway_held_bytes_max": {
            s.name: max(s.extra.get("gateway_held_bytes") or [0]) for s in scenarios[2:4]
        },
    }
    return section
