"""The token bucket: shared through Redis, refilled by Redis's clock."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from gateway.errors import RateLimited
from gateway.security.ratelimit import RateLimiter


async def test_exactly_the_limit_is_admitted_under_concurrency(
    redis_client: aioredis.Redis,
) -> None:
    limiters = [RateLimiter(redis_client, fail_open=True) for _ in range(4)]
    bucket = f"test:{uuid.uuid4().hex}"

    decisions = await asyncio.gather(
        *(limiters[i % 4].take(bucket, limit=5, window_s=60) for i in range(100))
    )

    assert sum(d.allowed for d in decisions) == 5
    refused = [d for d in decisions if not d.allowed]
    assert all(0 < d.retry_after_ms <= 12_000 for d in refused)


async def test_tokens_come_back_at_the_refill_rate(redis_client: aioredis.Redis) -> None:
    limiter = RateLimiter(redis_client, fail_open=True)
    bucket = f"test:{uuid.uuid4().hex}"
    # 2 tokens per second: one every 500 ms.
    assert (await limiter.take(bucket, limit=2, window_s=1)).allowed
    assert (await limiter.take(bucket, limit=2, window_s=1)).allowed
    refused = await limiter.take(bucket, limit=2, window_s=1)
    assert not refused.allowed

    await asyncio.sleep(refused.retry_after_ms / 1000 + 0.05)

    assert (await limiter.take(bucket, limit=2, window_s=1)).allowed
    assert not (await limiter.take(bucket, limit=2, window_s=1)).allowed


async def test_enforce_raises_with_the_429_headers(redis_client: aioredis.Redis) -> None:
    limiter = RateLimiter(redis_client, fail_open=True)
    bucket = f"test:{uuid.uuid4().hex}"
    await limiter.enforce(bucket, limit=1, window_s=60, what="this agent")

    with pytest.raises(RateLimited) as caught:
        await limiter.enforce(bucket, limit=1, window_s=60, what="this agent")

    assert caught.value.headers["RateLimit-Policy"] == "1;w=60"
    assert 59 <= int(caught.value.headers["Retry-After"]) <= 60
    assert caught.value.extra["retryAfterMs"] > 59_000


@pytest.fixture
async def unreachable_redis() -> aioredis.Redis:
    return aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)


@pytest.mark.parametrize("fail_open", [True, False])
async def test_redis_down_follows_the_fail_open_setting(
    unreachable_redis: aioredis.Redis, fail_open: bool
) -> None:
    limiter = RateLimiter(unreachable_redis, fail_open=fail_open)
    try:
        if fail_open:
            assert (await limiter.enforce("b", limit=1, window_s=60, what="x")).allowed
        else:
            with pytest.raises(RateLimited):
                await limiter.enforce("b", limit=1, window_s=60, what="x")
    finally:
        await unreachable_redis.aclose()
