"""The benchmark's client: a process of its own, so that its CPU is never the server's.

Each mode prints one JSON line on stdout with what it measured.

``requests``   closed-loop load: ``--conns`` connections POST for ``--duration`` seconds
               (after ``--warmup``); req/s and latency percentiles.
``downloads``  ``--count`` downloads at once, each body discarded and its size checked.
``slow``       one download read at ``--rate`` bytes/s for ``--seconds``, then left; before
               leaving, asks the origin how many bytes it has written (``--sent-url``).
``hold``       ``--count`` trigger-and-wait calls opened at once, each with its own input
               (``{"input": {"seq": i}, "timeoutMs": --wait-ms}``), all waited for: how many
               answered 200 ``completed`` with their own run's echo from the bench runtime's
               slow route, and the ``time.monotonic()`` of the first and last answer.
``stream``     one streamed answer (``--kind sse`` from the gateway's execute, ``ndjson`` from
               the runtime directly); for every frame, the delay from the runtime writing it
               (the ``<seq>:<monotonic ns>:`` its content starts with) to this process reading it.

A URL may contain ``{id}``: request ``i`` then goes to the ``i``-th id of ``--ids`` (cycled),
which spreads load over many agents.

    python -m bench.loadgen requests --url http://127.0.0.1:9200/x --conns 64 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import resource
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from typing import Any

import aiohttp


def latency_summary(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean by nearest rank; NaN-free (zeros) when empty."""
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "p999": 0.0, "max": 0.0, "mean": 0.0}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered), max(1, math.ceil(p / 100 * len(ordered)))) - 1]

    return {
        "p50": rank(50),
        "p90": rank(90),
        "p99": rank(99),
        "p999": rank(99.9),
        "max": ordered[-1],
        "mean": sum(ordered) / len(ordered),
    }


class Targets:
    """URLs for successive requests: ``{id}`` filled from the ids, cycled."""

    def __init__(self, template: str, ids: Sequence[str]) -> None:
        self._template = template
        self._ids = list(ids) or [""]
        self._counter = itertools.count()

    def next(self) -> str:
        """The URL of the next request."""
        index = next(self._counter)
        return self._template.replace("{id}", self._ids[index % len(self._ids)])


def _headers(raw: Sequence[str]) -> dict[str, str]:
    headers = {}
    for item in raw:
        name, _, value = item.partition(":")
        headers[name.strip()] = value.strip()
    return headers


def _ids(path: str | None) -> list[str]:
    if not path:
        return []
    with open(path) as ids:
        return [line.strip() for line in ids if line.strip()]


def _session(limit: int, timeout_s: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding",),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit, force_close=False),
    )


async def run_requests(args: argparse.Namespace) -> dict[str, Any]:
    """Closed loop: every connection sends its next request when the previous one ends."""
    targets = Targets(args.url, _ids(args.ids))
    headers = _headers(args.header)
    body = args.body.encode() if args.body is not None else None
    latencies = array("d")
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    sample_error: dict[str, str] = {}
    loop = asyncio.get_running_loop()
    started = loop.time()
    measure_from = started + args.warmup
    end = measure_from + args.duration

    async def worker(session: aiohttp.ClientSession) -> None:
        while (now := loop.time()) < end:
            url = targets.next()
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    text = await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                if now >= measure_from:
                    errors[type(exc).__name__] += 1
                continue
            elapsed = time.perf_counter() - t0
            if now >= measure_from and loop.time() <= end:
                latencies.append(elapsed)
                statuses[status] += 1
                if status != args.expect_status and str(status) not in sample_error:
                    sample_error[str(status)] = text[:300].decode("utf-8", "replace")

    async with _session(args.conns, args.timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(args.conns)))
    ok = statuses.get(args.expect_status, 0)
    return {
        "mode": "requests",
        "conns": args.conns,
        "seconds": args.duration,
        "requests": len(latencies),
        "ok": ok,
        "rps": ok / args.duration,
        "statuses": {str(k): v for k, v in statuses.items()},
        "errors": dict(errors),
        "sample_error": sample_error,
        "latency_s": latency_summary(latencies),
    }


async def run_downloads(args: argparse.Namespace) -> dict[str, Any]:
    """``--count`` downloads at once; each body is read and dropped, its size checked."""
    targets = Targets(args.url, _ids(args.ids))
    headers = _headers(args.header)
    body = args.body.encode() if args.body is not None else None
    sizes: list[int] = []
    failures: Counter[str] = Counter()
    seconds: list[float] = []

    async def one(session: aiohttp.ClientSession, url: str) -> None:
        t0 = time.perf_counter()
        size = 0
        try:
            async with session.post(url, data=body, headers=headers) as response:
                async for chunk in response.content.iter_any():
                    size += len(chunk)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            failures[type(exc).__name__] += 1
            return
        seconds.append(time.perf_counter() - t0)
        if status != 200:
            failures[f"HTTP {status}"] += 1
        elif args.expect_bytes is not None and size != args.expect_bytes:
            failures[f"{size} bytes"] += 1
        else:
            sizes.append(size)

    t0 = time.perf_counter()
    async with _session(0, args.timeout) as session:
        await asyncio.gather(*(one(session, targets.next()) for _ in range(args.count)))
    return {
        "mode": "downloads",
        "count": args.count,
        "ok": len(sizes),
        "bytes": sum(sizes),
        "failures": dict(failures),
        "seconds": time.perf_counter() - t0,
        "download_s": latency_summary(seconds),
    }


async def run_slow(args: argparse.Namespace) -> dict[str, Any]:
    """Read at ``--rate`` bytes/s for ``--seconds``, ask the origin how far it got, leave."""
    headers = _headers(args.header)
    body = args.body.encode() if args.body is not None else None
    consumed = 0
    status = 0
    origin_sent: int | None = None
    session = _session(0, args.seconds + args.timeout)
    async with session, session.post(args.url, data=body, headers=headers) as response:
        status = response.status
        t0 = time.perf_counter()
        end = t0 + args.seconds
        while (now := time.perf_counter()) < end:
            # Never ahead of the rate: sleep until the bytes taken so far are due.
            due = t0 + consumed / args.rate
            if due > now:
                await asyncio.sleep(due - now)
                continue
            chunk = await response.content.read(args.read_size)
            if not chunk:
                break
            consumed += len(chunk)
        seconds = time.perf_counter() - t0
        if args.sent_url:
            async with session.get(args.sent_url) as sent:
                origin_sent = int((await sent.json())["sent"])
        response.close()
    return {
        "mode": "slow",
        "status": status,
        "consumed": consumed,
        "seconds": seconds,
        "rate": consumed / seconds if seconds > 0 else 0.0,
        "origin_sent": origin_sent,
    }


def _correct(answer: Any, seq: int) -> bool:
    """A completed run whose output is the slow route's echo of this call's own run."""
    if not isinstance(answer, dict) or answer.get("status") != "completed":
        return False
    output = answer.get("output_data")
    return (
        isinstance(output, dict)
        and output.get("ok") is True
        and output.get("runId") == answer.get("runId")
        and output.get("input") == {"seq": seq}
    )


async def run_hold(args: argparse.Namespace) -> dict[str, Any]:
    """``--count`` calls at once, every one held until its run ends; each answer checked."""
    targets = Targets(args.url, _ids(args.ids))
    headers = _headers(args.header)
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    samples: dict[str, str] = {}
    answered = array("d")
    cpu_at = array("d")
    latencies = array("d")
    correct = 0

    async def one(session: aiohttp.ClientSession, url: str, seq: int) -> None:
        nonlocal correct
        body = json.dumps({"input": {"seq": seq}, "timeoutMs": args.wait_ms}).encode()
        t0 = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            errors[type(exc).__name__] += 1
            samples.setdefault(type(exc).__name__, str(exc)[:300])
            return
        answered.append(time.monotonic())
        # This process's CPU from its first answer to its last: its share of the fan-in.
        cpu_at.append(time.process_time())
        latencies.append(time.perf_counter() - t0)
        statuses[str(status)] += 1
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if status == 200 and _correct(answer, seq):
            correct += 1
        else:
            samples.setdefault(f"HTTP {status}", raw[:300].decode("utf-8", "replace"))

    started = time.monotonic()
    async with _session(0, args.timeout) as session:
        await asyncio.gather(*(one(session, targets.next(), seq) for seq in range(args.count)))
    return {
        "mode": "hold",
        "count": args.count,
        "correct": correct,
        "statuses": dict(statuses),
        "errors": dict(errors),
        "samples": samples,
        "started": started,
        "first_answer": min(answered, default=0.0),
        "last_answer": max(answered, default=0.0),
        "answering_cpu_s": cpu_at[-1] - cpu_at[0] if cpu_at else 0.0,
        "latency_s": latency_summary(latencies),
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
    }


def _frame_content(line: bytes, kind: str) -> str | None:
    """The text of an item frame (its content / chunk), or None for any other line."""
    if kind == "sse":
        if not line.startswith(b"data: "):
            return None
        payload = line[6:]
        if payload.strip() in (b"[DONE]", b'"[DONE]"'):
            return None
        value = json.loads(payload)
        chunk = value.get("chunk") if isinstance(value, dict) else None
        return chunk if isinstance(chunk, str) else None
    value = json.loads(line)
    if isinstance(value, dict) and value.get("type") == "item":
        content = value.get("content")
        return content if isinstance(content, str) else None
    return None


async def run_stream(args: argparse.Namespace) -> dict[str, Any]:
    """One streamed answer; every item frame's delay from written (upstream) to read (here)."""
    headers = _headers(args.header)
    body = args.body.encode() if args.body is not None else None
    delays_us = array("d")
    expected_seq = 0
    out_of_order = 0
    done = False
    pending = b""
    first_frame_s: float | None = None
    async with _session(0, args.timeout) as session:
        t0 = time.perf_counter()
        async with session.post(args.url, data=body, headers=headers) as response:
            status = response.status
            if status != 200:
                text = (await response.read())[:500].decode("utf-8", "replace")
                return {"mode": "stream", "status": status, "body": text}
            async for data in response.content.iter_any():
                received = time.monotonic_ns()
                lines = (pending + data).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    line = line.rstrip(b"\r")
                    if not line:
                        continue
                    if args.kind == "sse" and line.startswith(b"data: ") and b"[DONE]" in line:
                        done = True
                    content = _frame_content(line, args.kind)
                    if content is None:
                        continue
                    seq_text, written, _rest = content.split(":", 2)
                    if int(seq_text) != expected_seq:
                        out_of_order += 1
                    expected_seq = int(seq_text) + 1
                    delays_us.append((received - int(written)) / 1000)
                    if first_frame_s is None:
                        first_frame_s = time.perf_counter() - t0
        seconds = time.perf_counter() - t0
    return {
        "mode": "stream",
        "status": status,
        "frames": len(delays_us),
        "out_of_order": out_of_order,
        "done": done or args.kind == "ndjson",
        "seconds": seconds,
        "first_frame_s": first_frame_s,
        "delay_us": latency_summary(delays_us),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", required=True, help="target; '{id}' is filled from --ids")
    common.add_argument("--ids", help="file with one id per line, cycled over requests")
    common.add_argument("--header", action="append", default=[], help="'Name: value'")
    common.add_argument("--body", help="request body (POST)")
    common.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")

    requests = sub.add_parser("requests", parents=[common], help="closed-loop small requests")
    requests.add_argument("--conns", type=int, default=64)
    requests.add_argument("--duration", type=float, default=10.0)
    requests.add_argument("--warmup", type=float, default=1.0)
    requests.add_argument("--expect-status", type=int, default=200)

    downloads = sub.add_parser("downloads", parents=[common], help="concurrent downloads")
    downloads.add_argument("--count", type=int, required=True)
    downloads.add_argument("--expect-bytes", type=int)

    slow = sub.add_parser("slow", parents=[common], help="one slow reader")
    slow.add_argument("--rate", type=float, default=1_000_000.0, help="bytes per second")
    slow.add_argument("--seconds", type=float, default=15.0)
    slow.add_argument("--read-size", type=int, default=16 * 1024)
    slow.add_argument("--sent-url", help="the origin's /sent?tag=... for this download")

    hold = sub.add_parser("hold", parents=[common], help="trigger-and-wait calls held at once")
    hold.add_argument("--count", type=int, required=True)
    hold.add_argument("--wait-ms", type=int, default=120_000, help="the calls' timeoutMs")

    stream = sub.add_parser("stream", parents=[common], help="one streamed answer")
    stream.add_argument("--kind", choices=("sse", "ndjson"), required=True)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run one mode and print its JSON line."""
    args = parse_args(argv)
    # One socket per call held open: thousands at once need more than a default soft limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    modes = {
        "requests": run_requests,
        "downloads": run_downloads,
        "slow": run_slow,
        "stream": run_stream,
        "hold": run_hold,
    }
    result = asyncio.run(modes[args.mode](args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
