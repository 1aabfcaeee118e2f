"""The rate limiter: decisions per second and the latency of one ``RateLimiter.take`` call.

The gateway's own :class:`gateway.security.ratelimit.RateLimiter` (one Lua script per decision) runs
against the stack's Redis in a process of its own, a bounded number of calls, once with one
call at a time (one connection) and once with ``--concurrency`` calls in flight. The reference,
in the same process and run, is a Redis ``PING``: the cheapest round trip there is.

    python -m bench.limiter --redis redis://127.0.0.1:6379/0 --count 20000 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from bench.loadgen import latency_summary
from bench.processes import CpuWatch, python_module
from bench.report import Row, Section, ratio
from bench.stack import Stack, run_json
from gateway.security.ratelimit import RateLimiter


@dataclass
class LimiterConfig:
    """How many calls, how many at once."""

    count: int = 20_000
    concurrency: int = 64
    buckets: int = 1000


async def _timed(
    call: Callable[[int], Awaitable[Any]], count: int, concurrency: int
) -> dict[str, Any]:
    latencies = array("d")
    next_index = iter(range(count))

    async def worker() -> None:
        for index in next_index:
            t0 = time.perf_counter()
            await call(index)
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - t0
    return {
        "calls": count,
        "seconds": seconds,
        "per_s": count / seconds,
        "latency_s": latency_summary(latencies),
    }


async def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, then time PING and the limiter at the asked concurrency."""
    redis = aioredis.Redis.from_url(args.redis, max_connections=max(8, args.concurrency * 2))
    limiter = RateLimiter(redis, fail_open=False)
    try:

        async def ping(_index: int) -> None:
            await redis.ping()

        async def decide(index: int) -> None:
            await limiter.take(f"bench:{index % args.buckets}", limit=5, window_s=60)

        await _timed(decide, min(2000, args.count), args.concurrency)  # script loaded, pool warm
        await _timed(ping, min(2000, args.count), args.concurrency)
        return {
            "concurrency": args.concurrency,
            "ping": await _timed(ping, args.count, args.concurrency),
            "limiter": await _timed(decide, args.count, args.concurrency),
        }
    finally:
        await redis.aclose()


def measure(stack: Stack, cfg: LimiterConfig) -> dict[str, Any]:
    """The worker at concurrency 1 and ``cfg.concurrency``; the figures per concurrency."""
    assert stack.backends is not None
    out: dict[str, Any] = {}
    for concurrency in (1, cfg.concurrency):
        cpu = CpuWatch({})
        got = run_json(
            python_module(
                "limiter",
                "--redis",
                stack.backends.redis_url,
                "--count",
                str(cfg.count),
                "--concurrency",
                str(concurrency),
                "--buckets",
                str(cfg.buckets),
            ),
            timeout=300,
            what="rate limiter",
        )
        got["steal"] = cpu.done()["steal"]
        lim, ping = got["limiter"], got["ping"]
        print(
            f"  [limiter, {concurrency:>3} at once] {lim['per_s']:8.0f} decisions/s  "
            f"p99 {lim['latency_s']['p99'] * 1e6:7.0f} µs   (PING {ping['per_s']:8.0f}/s  "
            f"p99 {ping['latency_s']['p99'] * 1e6:7.0f} µs)",
            flush=True,
        )
        out[str(concurrency)] = got
    return out


def rows(section: Section, figures: dict[str, Any]) -> None:
    """The limiter's rows: decisions/s and p99 against PING, per concurrency."""
    for concurrency, got in figures.items():
        lim, ping = got["limiter"], got["ping"]
        section.add(
            Row(
                f"rate limiter decisions/s, {concurrency} at once",
                f"{lim['per_s']:.0f}",
                f"PING {ping['per_s']:.0f}/s",
                ratio(lim["per_s"], ping["per_s"]),
                "-",
                None,
                {"limiter_per_s": lim["per_s"], "ping_per_s": ping["per_s"]},
            )
        )
        mine, theirs = lim["latency_s"]["p99"] * 1000, ping["latency_s"]["p99"] * 1000
        section.add(
            Row(
                f"rate limiter p99 latency, {concurrency} at once",
                f"{mine:.3f} ms",
                f"PING {theirs:.3f} ms",
                ratio(mine, theirs),
                "-",
                None,
                {"limiter_p99_ms": mine, "ping_p99_ms": theirs},
            )
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The worker's command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--redis", required=True, help="Redis URL")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--buckets", type=int, default=1000)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the worker and print its JSON line."""
    args = parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    print(json.dumps(asyncio.run(run_worker(args))))


if __name__ == "__main__":
    main()
