"""SSE: small frames from an n8n streaming webhook through ``POST /api/workflows/{id}/execute``.

The bench runtime (``/webhook/ndjson``) answers like an n8n Webhook node in "Streaming" mode:
newline-delimited JSON chunks (begin, items, end), each item's content starting with
``<seq>:<CLOCK_MONOTONIC ns>:`` taken just before the runtime wrote it. The client process
(``bench/loadgen.py stream``) reads either the runtime directly (the NDJSON, the reference) or
the gateway's Server-Sent Events (``{"stream": true}`` with the ingest key as ``X-API-Key``),
and for every frame records the delay from the runtime writing it to the client reading it.

- **burst**: ``frames`` items written back to back: the time to forward all of them.
- **paced**: items written one every ``interval_us``: the delay a frame sees when nothing
  queues behind it; the gateway's added delay is its percentile minus the direct one.

When the execute route is not there (a ``GET`` on it answers 404, not 405), the measurement is
skipped with a message.
"""

from __future__ import annotations

import statistics
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from bench.processes import BenchError, CpuWatch, python_module
from bench.report import Row, Section, at_most, ratio
from bench.stack import Stack, agent_body, run_json

# Issue 30's target: a burst forwarded in at most twice the time the runtime's own stream takes.
BURST_RATIO = 2.0


@dataclass
class SseConfig:
    """How many frames, how fast, how often."""

    frames: int = 10_000
    paced_frames: int = 10_000
    interval_us: int = 1000
    pad: int = 32
    runs: int = 3


def _execute_url(base: str, agent_id: int) -> str:
    return f"{base}/api/workflows/{agent_id}/execute"


def route_present(base: str) -> bool:
    """Whether the gateway has the execute route: a GET on it is a 405 then, not a 404."""
    request = urllib.request.Request(_execute_url(base, 1), method="GET")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - loopback, ours
            return True
    except urllib.error.HTTPError as exc:
        return exc.code != 404


def _stream(stack: Stack, url: str, kind: str, *, watch: dict[str, int | None]) -> dict[str, Any]:
    argv = [*python_module("loadgen"), "stream", "--url", url, "--kind", kind, "--timeout", "300"]
    if kind == "sse":
        argv += [
            "--header",
            f"X-API-Key: {stack.ingest_key}",
            "--header",
            "Content-Type: application/json",
            "--body",
            '{"stream": true}',
        ]
    cpu = CpuWatch(watch)
    result = run_json(argv, timeout=600, what=f"stream {url}")
    result["cpu"] = cpu.done()
    if result.get("status") != 200:
        raise BenchError(f"stream {url}: HTTP {result.get('status')} {result.get('body', '')}")
    return result


def measure(stack: Stack, cfg: SseConfig) -> Section:
    """Burst and paced streams, direct and through execute, interleaved."""
    section = Section("sse", "4. SSE: n8n streaming chunks through execute")
    gateway = stack.start_gateway("sse")
    try:
        if not route_present(gateway.base):
            print("SSE: skipped (execute route not present)", flush=True)
            section.skipped = "execute route not present"
            return section
        origin = stack.origin_base
        shapes = {
            "burst": f"frames={cfg.frames}&interval_us=0&pad={cfg.pad}",
            "paced": f"frames={cfg.paced_frames}&interval_us={cfg.interval_us}&pad={cfg.pad}",
        }
        ids = stack.create_agents(
            agent_body(f"sse {name}", f"{origin}/webhook/ndjson?{query}", "stream")
            for name, query in shapes.items()
        )
        agents = dict(zip(shapes, ids, strict=True))
        origin_pid = stack.origin.pid if stack.origin is not None else None
        results: dict[str, dict[str, list[dict[str, Any]]]] = {s: {} for s in shapes}
        for run in range(cfg.runs):
            for shape, query in shapes.items():
                paths = [
                    ("direct", f"{origin}/webhook/ndjson?{query}", "ndjson"),
                    ("gateway", _execute_url(gateway.base, agents[shape]), "sse"),
                ]
                if run % 2:
                    paths.reverse()
                for path, url, kind in paths:
                    watch = {"runtime": origin_pid}
                    if path == "gateway":
                        watch["gateway"] = gateway.pid
                    got = _stream(stack, url, kind, watch=watch)
                    expected = cfg.frames if shape == "burst" else cfg.paced_frames
                    if got["frames"] != expected or got["out_of_order"] or not got["done"]:
                        raise BenchError(
                            f"SSE {shape} {path}: {got['frames']} frames of {expected}, "
                            f"{got['out_of_order']} out of order, done={got['done']}"
                        )
                    results[shape].setdefault(path, []).append(got)
                    d = got["delay_us"]
                    print(
                        f"  [sse {shape} {path:<8} run {run + 1}] {got['seconds']:.3f} s  "
                        f"delay p50 {d['p50']:.0f} µs  p99 {d['p99']:.0f} µs",
                        flush=True,
                    )
    finally:
        gateway.child.stop()

    def med(shape: str, path: str, pick: Any) -> float:
        return statistics.median(pick(r) for r in results[shape][path])

    gw_s = med("burst", "gateway", lambda r: r["seconds"])
    dir_s = med("burst", "direct", lambda r: r["seconds"])
    section.add(
        Row(
            f"burst: time to forward {cfg.frames} frames",
            f"{gw_s * 1000:.0f} ms",
            f"direct {dir_s * 1000:.0f} ms",
            ratio(gw_s, dir_s),
            f"≤ {BURST_RATIO:g}x direct",
            at_most(ratio(gw_s, dir_s), BURST_RATIO),
            {"gateway_s": gw_s, "direct_s": dir_s},
        )
    )
    for shape in ("burst", "paced"):
        for p in ("p50", "p99"):
            mine = med(shape, "gateway", lambda r, p=p: r["delay_us"][p]) / 1000
            theirs = med(shape, "direct", lambda r, p=p: r["delay_us"][p]) / 1000
            added = mine - theirs
            paced_p99 = shape == "paced" and p == "p99"
            section.add(
                Row(
                    f"{shape}: frame delay {p}",
                    f"{mine:.2f} ms (+{added:.2f})",
                    f"direct {theirs:.2f} ms",
                    ratio(mine, theirs),
                    "p99 added ≤ 1 ms" if paced_p99 else "-",
                    at_most(added, 1.0) if paced_p99 else None,
                    {"gateway_ms": mine, "direct_ms": theirs, "added_ms": added},
                )
            )
    section.notes.append(
        f"Medians of {cfg.runs} runs. Burst: {cfg.frames} frames written back to back (the "
        "delay there is mostly queueing behind earlier frames). Paced: "
        f"{cfg.paced_frames} frames, one every {cfg.interval_us} µs. Each frame's content "
        f"carries {cfg.pad} filler characters after its sequence number and timestamp."
    )
    section.raw = {"config": cfg.__dict__, **results}
    return section
