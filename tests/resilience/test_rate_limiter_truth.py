"""The rate limiter's truth: one bucket per agent across every replica, never double-spent,
refilled by Redis's clock whatever a replica's own clock says."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import math
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from gateway.security.ratelimit import RateLimiter
from store.consumer import StoreConsumer
from tests.support.backends import Backends
from tests.support.live_gateways import LiveFactory
from tests.support.processes import Processes, process_env, wait_until_ready

SKEW_S = 3600
# Python's wall clock, an hour ahead, in every process that imports this (sitecustomize).
_SKEWED_CLOCK = f"""
import time

_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + {SKEW_S}
time.time_ns = lambda: _time_ns() + {SKEW_S} * 1_000_000_000
"""


async def test_400_concurrent_requests_on_4_replicas_one_skewed_admit_exactly_5(
    make_live: LiveFactory,
    consumer: StoreConsumer,
    processes: Processes,
    backends: Backends,
    runtime: TestServer,
    tmp_path: Path,
) -> None:
    """The 5-a-minute sync bucket, shared by trigger-and-wait on three replicas in this
    process and a fourth ``serve`` process whose clock is an hour ahead: of 400 requests sent
    at once, exactly 5 are admitted and 395 get a 429 with Retry-After."""
    replicas = [await make_live() for _ in range(3)]
    skew_dir = tmp_path / "skew"
    skew_dir.mkdir()
    (skew_dir / "sitecustomize.py").write_text(_SKEWED_CLOCK)
    env = process_env(backends, SYNC_RATE_LIMIT="5", SYNC_RATE_WINDOW_S="60")
    env["PYTHONPATH"] = f"{skew_dir}:{env.get('PYTHONPATH', '')}".rstrip(":")
    skewed = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
    processes.start("serve", env=env, log=tmp_path / "serve.log")

    connector = aiohttp.TCPConnector(limit=400, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        await wait_until_ready(http, skewed)
        async with http.get(f"{skewed}/healthz") as resp:
            their_now = email.utils.parsedate_to_datetime(resp.headers["Date"])
        assert their_now - dt.datetime.now(dt.UTC) > dt.timedelta(seconds=SKEW_S - 60)

        caller = await replicas[0].caller()
        # The webhook takes the run and never reports: an admitted request waits its 3 s (time
        # for the runtime, in this process with 400 calls landing at once, to take it).
        agent = await replicas[0].agent(
            caller, str(runtime.make_url("/webhook/accepted?report=0")), output_kind="json"
        )
        bases = [live.base for live in replicas] + [skewed]
        path = f"/api/agents/{agent['id']}/runs/trigger-and-wait"

        async def one(i: int) -> tuple[int, int, str | None]:
            async with http.post(
                bases[i % 4] + path, json={"timeoutMs": 3000}, headers=caller.auth
            ) as resp:
                await resp.read()
                return i % 4, resp.status, resp.headers.get("Retry-After")

        answers = await asyncio.gather(*(one(i) for i in range(400)))

    statuses = Counter(status for _replica, status, _retry in answers)
    assert statuses == {202: 5, 429: 395}, statuses
    assert all(retry and int(retry) >= 1 for _r, status, retry in answers if status == 429)
    # Every replica refused: the bucket is one, wherever a request lands.
    assert {replica for replica, status, _retry in answers if status == 429} == {0, 1, 2, 3}
    print(  # docs/reliability.md quotes this figure
        f"\nrate limit: 400 concurrent on 4 replicas (one {SKEW_S} s ahead): "
        f"{statuses[202]} admitted, {statuses[429]} refused; admitted by replica "
        f"{sorted(Counter(r for r, s, _ in answers if s == 202).items())}"
    )


async def _redis_ms(redis: aioredis.Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_each_refill_admits_exactly_the_capacity_and_nothing_is_double_spent(
    backends: Backends,
) -> None:
    """Four replicas' limiters (four Redis connections) take from one bucket of 5 per 2 s:
    a burst of 400 takes admits the 5 tokens there and no more (plus any token minted while
    the burst lasted, by Redis's clock); after each refill, again exactly that."""
    clients = [backends.redis() for _ in range(4)]
    limiters = [RateLimiter(client, fail_open=False) for client in clients]
    bucket = f"truth:{uuid.uuid4().hex}"
    limit, window_s = 5, 2
    per_token_ms = window_s * 1000 // limit
    figures = []
    try:
        # Each replica's connections are open before the first burst, as in a running gateway.
        await asyncio.gather(*(clients[i % 4].ping() for i in range(400)))
        for refill in range(3):
            if refill:
                await asyncio.sleep(window_s + 0.1)  # the bucket is full again
            started = await _redis_ms(clients[0])
            decisions = await asyncio.gather(
                *(limiters[i % 4].take(bucket, limit=limit, window_s=window_s) for i in range(400))
            )
            ended = await _redis_ms(clients[0])
            admitted = sum(d.allowed for d in decisions)
            minted = math.floor((ended - started) / per_token_ms)
            assert limit <= admitted <= limit + minted, (admitted, ended - started)
            figures.append((admitted, ended - started))
            # The refused were told when a token comes back.
            assert all(0 < d.retry_after_ms <= per_token_ms for d in decisions if not d.allowed)
    finally:
        for client in clients:
            await client.aclose()
    print(  # docs/reliability.md quotes these figures
        "\nrate limit refills (5 per 2 s, 400 takes from 4 connections): "
        + ", ".join(f"{a} admitted in {ms} ms" for a, ms in figures)
    )


async def test_a_lowered_limit_takes_effect_at_once(redis_client: aioredis.Redis) -> None:
    """Regression: a bucket filled under a larger limit kept its tokens after the limit was
    lowered (an operator lowering SYNC_RATE_LIMIT saw the old limit until they were spent)."""
    limiter = RateLimiter(redis_client, fail_open=False)
    bucket = f"lowered:{uuid.uuid4().hex}"
    assert (await limiter.take(bucket, limit=100, window_s=60)).allowed

    admitted = [(await limiter.take(bucket, limit=3, window_s=60)).allowed for _ in range(10)]

    assert admitted == [True] * 3 + [False] * 7
