"""Per-agent token buckets in Redis: one atomic Lua script per decision, Redis's clock.

Every replica shares the bucket, and the refill is computed from ``TIME`` inside Redis, so a
replica with a skewed clock cannot mint tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from gateway.errors import RateLimited

log = structlog.get_logger(__name__)

# KEYS[1] bucket; ARGV[1] capacity; ARGV[2] milliseconds per token; ARGV[3] tokens to take
# (0: only look, changing nothing). Returns {allowed, tokens_left, retry_after_ms, ms_until_full}.
_TOKEN_BUCKET = """
local capacity = tonumber(ARGV[1])
local per_token = tonumber(ARGV[2])
local cost = tonumber(ARGV[3] or '1')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  if cost == 0 then
    return {1, capacity, 0, 0}
  end
  tokens = capacity
  ts = now
end
-- A bucket filled under a larger limit holds no more than the limit now in force.
tokens = math.min(tokens, capacity)
if now > ts then
  local earned = math.floor((now - ts) / per_token)
  if earned > 0 then
    tokens = math.min(capacity, tokens + earned)
    ts = ts + earned * per_token
  end
end
if tokens >= capacity then
  ts = now
end
local allowed = 0
local retry = 0
if tokens >= 1 then
  tokens = tokens - cost
  allowed = 1
else
  retry = per_token - (now - ts)
end
if cost > 0 then
  redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', ts)
  redis.call('PEXPIRE', KEYS[1], capacity * per_token + 1000)
end
local full = (capacity - tokens) * per_token - (now - ts)
if full < 0 then full = 0 end
return {allowed, tokens, retry, full}
"""  # noqa: S105 - a Lua script, not a secret


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one take from a bucket."""

    allowed: bool
    limit: int
    remaining: int
    retry_after_ms: int
    reset_ms: int


class RateLimiter:
    """Takes tokens from per-agent buckets; raises :class:`RateLimited` when one is empty."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        fail_open: bool,
        observe: Callable[[str, str], None] | None = None,
    ) -> None:
        self._redis = redis
        self._script = redis.register_script(_TOKEN_BUCKET)
        self._fail_open = fail_open
        # Told (bucket, decision) for every decision, for metrics.
        self._observe = observe or (lambda bucket, decision: None)

    async def take(self, bucket: str, *, limit: int, window_s: int, cost: int = 1) -> Decision:
        """Take one token from ``bucket`` (``limit`` tokens per ``window_s`` seconds).

        With ``cost=0`` nothing is taken: the decision says whether a token is there.
        """
        per_token_ms = max(1, window_s * 1000 // limit)
        try:
            raw = await self._script(keys=[f"ratelimit:{bucket}"], args=[limit, per_token_ms, cost])
        except (RedisError, OSError) as exc:
            log.warning(
                "rate_limit_unavailable", bucket=bucket, fail_open=self._fail_open, error=str(exc)
            )
            if self._fail_open:
                self._observe(bucket, "unavailable_allowed")
                return Decision(True, limit, limit, 0, 0)
            self._observe(bucket, "unavailable_refused")
            raise RateLimited(
                "Rate limiter unavailable; try again shortly",
                extra={"retryAfterMs": 1000},
                headers={"Retry-After": "1"},
            ) from exc
        allowed, remaining, retry_ms, reset_ms = (int(v) for v in raw)
        if cost or not allowed:
            # A look that finds a token decided nothing worth counting.
            self._observe(bucket, "allowed" if allowed else "limited")
        return Decision(bool(allowed), limit, remaining, max(0, retry_ms), max(0, reset_ms))

    async def enforce(self, bucket: str, *, limit: int, window_s: int, what: str) -> Decision:
        """Like :meth:`take`, but raise :class:`RateLimited` with the 429 headers when empty."""
        decision = await self.take(bucket, limit=limit, window_s=window_s)
        if decision.allowed:
            return decision
        retry_s = max(1, math.ceil(decision.retry_after_ms / 1000))
        raise RateLimited(
            f"Rate limit exceeded: {limit} requests per {window_s} s for {what}",
            extra={"retryAfterMs": decision.retry_after_ms},
            headers={
                "Retry-After": str(retry_s),
                "RateLimit-Policy": f"{limit};w={window_s}",
                "RateLimit": f"limit={limit}, remaining=0, reset={retry_s}",
            },
        )
