"""Small requests: trigger-and-wait against an instant JSON runtime, many agents, many connections.

The gateway's full path (auth, per-agent rate limit, run row, events through the store
consumer, the wait for the run's end) is compared with a bare aiohttp pass-through
(``bench/passthrough.py``) of the same runtime, measured in the same run, both driven by the
same closed-loop client process (``bench/loadgen.py requests``): ``--conns`` connections for
``--duration`` seconds after a warm-up. The requests go round ``agents`` busy agents (64), as
callers of a gateway call the agents they use again and again; the gateway runs with a
``SYNC_RATE_LIMIT`` wide enough that no bucket refuses one (a 429 would show in the statuses),
and every request still takes its token. ``agents=0`` spreads the requests over enough agents
that the default 5-a-minute bucket of each never refuses one instead (then hardly a request
finds its agent in the gateway's cache). The runtime alone is measured too, as the ceiling of
both.

A second pair of runs uses one connection: the latency a single caller sees, without queueing.

Where the time goes: the CPU milliseconds per request of every process (the gateway, the store
consumer, PostgreSQL, Redis, the runtime) beside the bare pass-through's, from their shares of
a core during the loaded runs.
"""

from __future__ import annotations

import json
import math
import urllib.request
from dataclasses import dataclass
from typing import Any

from bench.processes import BenchError, CpuWatch, python_module
from bench.report import Row, Section, at_least, at_most, ratio
from bench.stack import Stack, agent_body, run_json
from devkit.embedded import free_port

BUCKET = 5  # the default SYNC_RATE_LIMIT: tokens per agent per minute
# The sync-path issue's targets (issue 30's table): req/s at 64 connections against the bare
# pass-through's, latency one connection adds over it (ms), the gateway process's own CPU per
# request (ms).
THROUGHPUT_RATIO = 0.35
SINGLE_ADDED_MS = {"p50": 2.0, "p99": 5.0}
GATEWAY_CPU_MS = 0.6
# The processes of the loaded runs, in the order their rows are printed, and their labels.
CPU_PROCESSES = {
    "proxy": "gateway process",
    "consumer": "store consumer",
    "postgres": "PostgreSQL",
    "redis": "Redis",
    "runtime": "runtime",
}


@dataclass
class SmallConfig:
    """How long and how wide to load."""

    conns: int = 64
    duration: float = 10.0
    warmup: float = 1.0
    single_duration: float = 3.0
    # Upper bound on the gateway's req/s, to create enough agents.
    max_rps: int = 3000
    # Busy agents the requests go round (0: one fresh agent per few requests, default buckets).
    agents: int = 64


def _load(
    stack: Stack,
    url: str,
    *,
    conns: int,
    duration: float,
    warmup: float,
    ids: list[int] | None = None,
    gateway: bool = False,
    watch: dict[str, int | None] | None = None,
    label: str,
) -> dict[str, Any]:
    argv = [
        *python_module("loadgen"),
        "requests",
        "--url",
        url,
        "--conns",
        str(conns),
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
        "--body",
        '{"input": {"question": "bench"}}',
        "--timeout",
        "60",
    ]
    if ids is not None:
        argv += ["--ids", str(stack.write_ids(label.replace(" ", "-"), ids))]
    headers = stack.auth_headers() if gateway else ["Content-Type: application/json"]
    for header in headers:
        argv += ["--header", header]
    cpu = CpuWatch(watch or {})
    result = run_json(argv, timeout=duration + warmup + 120, what=f"load {label}")
    result["cpu"] = cpu.done()
    lat = result["latency_s"]
    print(
        f"  [small {label:<28}] {result['rps']:8.0f} req/s  p50 {lat['p50'] * 1000:6.2f} ms  "
        f"p99 {lat['p99'] * 1000:6.2f} ms  statuses {result['statuses']} "
        f"errors {result['errors']}",
        flush=True,
    )
    return result


def _check_answer(url: str, stack: Stack) -> None:
    """One trigger-and-wait must answer 200 with a completed run."""
    request = urllib.request.Request(  # noqa: S310 - a loopback URL of ours
        url, data=b'{"input": {}}', method="POST"
    )
    for header in stack.auth_headers():
        name, _, value = header.partition(":")
        request.add_header(name.strip(), value.strip())
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
        body = json.loads(answer.read())
    if body.get("status") != "completed":
        raise BenchError(f"trigger-and-wait answered {body}")


def cpu_ms_per_request(result: dict[str, Any]) -> dict[str, float]:
    """CPU milliseconds per answered request of every process watched during a loaded run:
    its share of one core x 1000 / req/s (steal is not a process and is left out)."""
    rps = result.get("rps") or 0.0
    if rps <= 0:
        return {}
    return {
        name: share * 1000 / rps
        for name, share in result.get("cpu", {}).items()
        if name != "steal" and share is not None
    }


def cpu_rows(section: Section, gateway: dict[str, Any], bare: dict[str, Any]) -> None:
    """Where the time goes: CPU per request of every process of the gateway's run beside the
    bare pass-through's (its proxy is the pass-through, the runtime the same in both), and the
    total of each."""
    mine, theirs = cpu_ms_per_request(gateway), cpu_ms_per_request(bare)
    for name, label in CPU_PROCESSES.items():
        if name not in mine:
            continue
        reference = theirs.get(name)
        gated = name == "proxy"
        section.add(
            Row(
                f"CPU per request, {label}",
                f"{mine[name]:.3f} ms",
                "-" if reference is None else f"bare {reference:.3f} ms",
                ratio(mine[name], reference),
                f"≤ {GATEWAY_CPU_MS:g} ms" if gated else "-",
                at_most(mine[name], GATEWAY_CPU_MS) if gated else None,
                {"gateway_ms": mine[name], "bare_ms": reference},
            )
        )
    total, bare_total = sum(mine.values()), sum(theirs.values())
    section.add(
        Row(
            "CPU per request, all processes",
            f"{total:.3f} ms",
            f"bare {bare_total:.3f} ms" if theirs else "-",
            ratio(total, bare_total) if theirs else None,
            "-",
            None,
            {"gateway_ms": total, "bare_ms": bare_total, "gateway": mine, "bare": theirs},
        )
    )


def single_cpu_rows(section: Section, gateway: dict[str, Any], bare: dict[str, Any]) -> None:
    """Where a lone caller's time goes: CPU per request of every process during the
    1-connection runs. Nothing queues there, so the latency a call adds is the gateway's own CPU
    time plus its round trips to Redis and PostgreSQL (whose CPU is shown beside it); a process
    that sleeps between every step of every request spends more CPU per request than the same
    process kept busy (the loaded run), the bare pass-through as much as the gateway."""
    mine, theirs = cpu_ms_per_request(gateway), cpu_ms_per_request(bare)
    if "proxy" not in mine:
        return
    reference = theirs.get("proxy")
    section.add(
        Row(
            "CPU per request, 1 connection, gateway process",
            f"{mine['proxy']:.3f} ms",
            "-" if reference is None else f"bare {reference:.3f} ms",
            ratio(mine["proxy"], reference),
            "-",
            None,
            {"gateway_ms": mine["proxy"], "bare_ms": reference},
        )
    )
    others = ", ".join(
        f"{CPU_PROCESSES[name]} {mine[name]:.3f} ms"
        for name in ("postgres", "redis", "runtime")
        if name in mine
    )
    section.notes.append(
        f"CPU per request at 1 connection: gateway process {mine['proxy']:.3f} ms, {others}; "
        f"bare pass-through {reference or 0:.3f} ms, runtime {theirs.get('runtime', 0):.3f} ms. "
        "A lone call waits on four round trips in turn (the limiter's Redis script, the run's "
        "INSERT, the runtime, its end's UPDATE), each a wake-up of a process that slept."
    )


def _traced(
    stack: Stack, cfg: SmallConfig, loaded: list[int], single: list[int], origin_pid: int | None
) -> dict[str, Any]:
    """The loaded and single-connection runs again on a gateway with tracing on."""
    sink_port = free_port()
    sink = stack.start_module("otlp-sink", "otlp_sink", "--port", str(sink_port), port=sink_port)
    traced = stack.start_gateway(
        "small-traced",
        SYNC_RATE_LIMIT="100000000",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{sink_port}",
        OTEL_SERVICE_NAME="agent-gateway-bench",
    )
    try:
        route = f"{traced.base}/api/agents/{{id}}/runs/trigger-and-wait"
        common = {"conns": cfg.conns, "duration": cfg.duration, "warmup": cfg.warmup}
        one = {"conns": 1, "duration": cfg.single_duration, "warmup": cfg.warmup}
        return {
            "traced": _load(
                stack,
                route,
                **common,
                ids=loaded,
                gateway=True,
                watch={"proxy": traced.pid, "runtime": origin_pid},
                label="gateway, tracing on",
            ),
            "traced_single": _load(
                stack, route, **one, ids=single, gateway=True, label="tracing on, 1 connection"
            ),
        }
    finally:
        traced.child.stop()
        sink.stop()


def _tracing_rows(section: Section, cfg: SmallConfig, results: dict[str, Any]) -> None:
    """Tracing on (every span exported) against off (the default), same load, same agents."""
    on, off = results["traced"], results["gateway"]
    section.add(
        Row(
            f"req/s, {cfg.conns} connections, tracing on",
            f"{on['rps']:.0f}",
            f"tracing off {off['rps']:.0f}",
            ratio(on["rps"], off["rps"]),
            "-",
            None,
            {"traced_rps": on["rps"], "untraced_rps": off["rps"]},
        )
    )
    for p in ("p50", "p99"):
        mine = results["traced_single"]["latency_s"][p] * 1000
        theirs = results["gateway_single"]["latency_s"][p] * 1000
        section.add(
            Row(
                f"{p} latency, 1 connection, tracing on",
                f"{mine:.2f} ms (+{mine - theirs:.2f})",
                f"tracing off {theirs:.2f} ms",
                ratio(mine, theirs),
                "-",
                None,
                {"traced_ms": mine, "untraced_ms": theirs},
            )
        )


def measure(stack: Stack, cfg: SmallConfig) -> Section:
    """Runtime, bare pass-through and gateway under the same load; then one connection."""
    section = Section("small", "3. Small requests: trigger-and-wait vs a bare aiohttp pass-through")
    runtime = f"{stack.origin_base}/webhook/json"
    if cfg.agents:
        loaded = single = cfg.agents
    else:
        # Every agent may take BUCKET requests a minute: enough agents for the loaded run at
        # max_rps, then separate ones for the single-connection run and the check.
        loaded = math.ceil(cfg.max_rps * (cfg.duration + cfg.warmup + 2) / BUCKET)
        single = math.ceil(cfg.max_rps / 4 * (cfg.single_duration + cfg.warmup + 1) / BUCKET)
    print(f"small: creating {loaded + single + 1} agents ...", flush=True)
    ids = stack.clone_agents(agent_body("small", runtime, "json"), loaded + single + 1)
    port = free_port()
    bare = stack.start_module(
        "passthrough", "passthrough", "--port", str(port), "--upstream", runtime, port=port
    )
    # Busy agents: a bucket no load of this bench can empty (the take is made all the same).
    gateway = stack.start_gateway(
        "small", **({"SYNC_RATE_LIMIT": "100000000"} if cfg.agents else {})
    )
    origin_pid = stack.origin.pid if stack.origin is not None else None
    consumer_pid = stack.consumer.pid if stack.consumer is not None else None
    try:
        route = f"{gateway.base}/api/agents/{{id}}/runs/trigger-and-wait"
        _check_answer(route.replace("{id}", str(ids[-1])), stack)
        common = {"conns": cfg.conns, "duration": cfg.duration, "warmup": cfg.warmup}
        results = {
            "runtime": _load(
                stack, runtime, **common, watch={"runtime": origin_pid}, label="runtime alone"
            ),
            "bare": _load(
                stack,
                f"http://127.0.0.1:{port}/forward",
                **common,
                watch={"proxy": bare.pid, "runtime": origin_pid},
                label="bare pass-through",
            ),
            "gateway": _load(
                stack,
                route,
                **common,
                ids=ids[:loaded],
                gateway=True,
                watch={
                    "proxy": gateway.pid,
                    "runtime": origin_pid,
                    "consumer": consumer_pid,
                    "postgres": stack.postgres_pids,
                    "redis": stack.redis_pid,
                },
                label="gateway",
            ),
        }
        one = {"conns": 1, "duration": cfg.single_duration, "warmup": cfg.warmup}
        results["bare_single"] = _load(
            stack,
            f"http://127.0.0.1:{port}/forward",
            **one,
            watch={"proxy": bare.pid, "runtime": origin_pid},
            label="bare, 1 connection",
        )
        results["gateway_single"] = _load(
            stack,
            route,
            **one,
            ids=ids[loaded:-1],
            gateway=True,
            watch={
                "proxy": gateway.pid,
                "runtime": origin_pid,
                "postgres": stack.postgres_pids,
                "redis": stack.redis_pid,
            },
            label="gateway, 1 connection",
        )
        if cfg.agents:
            # The same busy agents through a replica with tracing on, exporting every span to a
            # local OTLP/HTTP sink (bench/otlp_sink.py): what tracing costs when it is used.
            results.update(_traced(stack, cfg, ids[:loaded], ids[loaded:-1], origin_pid))
    finally:
        gateway.child.stop()
        bare.stop()

    gw, ref = results["gateway"], results["bare"]
    throughput = ratio(gw["rps"], ref["rps"])
    section.add(
        Row(
            f"req/s, {cfg.conns} connections, {cfg.duration:g} s",
            f"{gw['rps']:.0f}",
            f"bare {ref['rps']:.0f}",
            throughput,
            f"≥ {THROUGHPUT_RATIO:g}x bare",
            at_least(throughput, THROUGHPUT_RATIO),
            {"gateway_rps": gw["rps"], "bare_rps": ref["rps"]},
        )
    )
    for label, g, r, bounds in (
        (f"{cfg.conns} connections", gw, ref, {}),
        (
            "1 connection",
            results["gateway_single"],
            results["bare_single"],
            SINGLE_ADDED_MS,
        ),
    ):
        for p in ("p50", "p99"):
            mine, theirs = g["latency_s"][p] * 1000, r["latency_s"][p] * 1000
            added = mine - theirs
            bound = bounds.get(p)
            section.add(
                Row(
                    f"{p} latency, {label}",
                    f"{mine:.2f} ms (+{added:.2f})",
                    f"bare {theirs:.2f} ms",
                    ratio(mine, theirs),
                    "-" if bound is None else f"{p} added ≤ {bound:.1f} ms",
                    None if bound is None else at_most(added, bound),
                    {"gateway_ms": mine, "bare_ms": theirs, "added_ms": added},
                )
            )
    single_cpu_rows(section, results["gateway_single"], results["bare_single"])
    if "traced" in results:
        _tracing_rows(section, cfg, results)
    cpu_rows(section, gw, ref)
    bad = {k: v for k, v in gw["statuses"].items() if k != "200"}
    section.notes.append(
        f"The runtime alone answered {results['runtime']['rps']:.0f} req/s "
        f"(p99 {results['runtime']['latency_s']['p99'] * 1000:.2f} ms) to the same client."
    )
    if bad or gw["errors"]:
        section.notes.append(f"gateway answers other than 200: {bad}, errors {gw['errors']}")
    cpu = gw.get("cpu", {})
    section.notes.append(
        "CPU share of one core during the gateway run: "
        + ", ".join(f"{k} {v * 100:.0f} %" for k, v in cpu.items() if v is not None)
        + "; during the bare run: "
        + ", ".join(f"{k} {v * 100:.0f} %" for k, v in ref.get("cpu", {}).items() if v is not None)
    )
    section.notes.append(
        "CPU per request: each process's share of one core during the 64-connection run x 1000 "
        "/ its req/s. In the gateway's run 'gateway process' is agent-gateway serve; in the bare "
        "run it is the pass-through, which is all there is besides the runtime."
    )
    section.raw = {"config": cfg.__dict__, "agents": len(ids), **results}
    return section
