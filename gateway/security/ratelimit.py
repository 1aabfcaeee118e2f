"""Per-agent token buckets in Redis: one atomic Lua script per decision, Redis's clock.

Every replica shares the bucket, and the refill is computed from ``TIME`` inside Redis, so a
replica with a skewed clock cannot mint tokens.

A bucket named ``agent:17:trigger`` is the key ``ratelimit:{agent:17}:trigger``: its owner (all
but the last part) is the hash tag, so on a Redis Cluster every bucket of one agent (or one
client address) is in one slot, and the owners are spread over the cluster's slots. One call
takes from buckets in order; buckets of different owners (the key guard's look at an address
and an agent's token) cannot share a slot, so on a cluster they are taken by one call per
owner, in the same order, stopping at the first refusal: the same decisions, one more round
trip (the look changes nothing, so only the atomicity between look and take is given up).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from gateway.errors import RateLimited
from store.redis_client import RedisClient, tagged

log = structlog.get_logger(__name__)

# KEYS: buckets, taken in order; ARGV: for each, its capacity, milliseconds per token and tokens
# to take (0: only look, changing nothing). The first bucket that refuses stops the rest (they are
# left untouched). Returns, for each bucket looked at, {allowed, tokens_left, retry_after_ms,
# ms_until_full}: one call can check the key guard and take an agent's token.
_TOKEN_BUCKETS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function take(key, capacity, per_token, cost)
  local state = redis.call('HMGET', key, 'tokens', 'ts')
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
    redis.call('HSET', key, 'tokens', tokens, 'ts', ts)
    redis.call('PEXPIRE', key, capacity * per_token + 1000)
  end
  local full = (capacity - tokens) * per_token - (now - ts)
  if full < 0 then full = 0 end
  return {allowed, tokens, retry, full}
end
local decisions = {}
for i, key in ipairs(KEYS) do
  local base = (i - 1) * 3
  local decision = take(key, tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]),
    tonumber(ARGV[base + 3]))
  decisions[i] = decision
  if decision[1] == 0 then
    break
  end
end
return decisions
"""  # noqa: S105 - a Lua script, not a secret


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one take from a bucket."""

    allowed: bool
    limit: int
    remaining: int
    retry_after_ms: int
    reset_ms: int


@dataclass(frozen=True, slots=True)
class Take:
    """One bucket to take from: ``limit`` tokens per ``window_s`` seconds, ``cost`` of them.

    With ``cost=0`` nothing is taken: the decision says whether a token is there.
    """

    bucket: str
    limit: int
    window_s: int
    cost: int = 1

    @property
    def per_token_ms(self) -> int:
        """Milliseconds it takes the bucket to earn one token back."""
        return max(1, self.window_s * 1000 // self.limit)


def _owner(take: Take) -> str:
    return take.bucket.rpartition(":")[0]


def bucket_key(bucket: str) -> str:
    """The Redis key of ``bucket``: ``agent:17:trigger`` is ``ratelimit:{agent:17}:trigger``.

    The owner (all but the bucket's class, its last part) is the hash tag.
    """
    owner, _, kind = bucket.rpartition(":")
    return "ratelimit:" + (tagged(owner, kind) if owner else tagged(kind))


def refusal(take: Take, decision: Decision, what: str) -> RateLimited:
    """The 429 (with its ``Retry-After`` and rate-limit headers) for an empty bucket."""
    retry_s = max(1, math.ceil(decision.retry_after_ms / 1000))
    return RateLimited(
        f"Rate limit exceeded: {take.limit} requests per {take.window_s} s for {what}",
        extra={"retryAfterMs": decision.retry_after_ms},
        headers={
            "Retry-After": str(retry_s),
            "RateLimit-Policy": f"{take.limit};w={take.window_s}",
            "RateLimit": f"limit={take.limit}, remaining=0, reset={retry_s}",
        },
    )


class RateLimiter:
    """Takes tokens from per-agent buckets; raises :class:`RateLimited` when one is empty."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        fail_open: bool,
        observe: Callable[[str, str], None] | None = None,
    ) -> None:
        self._redis = redis
        self._script = redis.register_script(_TOKEN_BUCKETS)
        # A cluster refuses one script over keys in different slots (CROSSSLOT).
        self._one_owner_per_call = isinstance(redis, RedisCluster)
        self._fail_open = fail_open
        # Told (bucket, decision) for every decision, for metrics.
        self._observe = observe or (lambda bucket, decision: None)

    async def take(self, bucket: str, *, limit: int, window_s: int, cost: int = 1) -> Decision:
        """Take ``cost`` tokens from ``bucket`` (``limit`` tokens per ``window_s`` seconds).

        With ``cost=0`` nothing is taken: the decision says whether a token is there.
        """
        (decision,) = await self.take_in_order(Take(bucket, limit, window_s, cost))
        return decision

    async def take_in_order(self, *takes: Take) -> list[Decision]:
        """Take from each bucket in turn, in one Redis call, stopping at the first refusal.

        The decisions are those of the buckets looked at: fewer than ``takes`` when one refused.
        """
        try:
            raw = await self._take_in_order(takes)
        except (RedisError, OSError) as exc:
            log.warning(
                "rate_limit_unavailable",
                bucket=takes[-1].bucket,
                fail_open=self._fail_open,
                error=str(exc),
            )
            if self._fail_open:
                self._observe(takes[-1].bucket, "unavailable_allowed")
                return [Decision(True, take.limit, take.limit, 0, 0) for take in takes]
            self._observe(takes[-1].bucket, "unavailable_refused")
            raise RateLimited(
                "Rate limiter unavailable; try again shortly",
                extra={"retryAfterMs": 1000},
                headers={"Retry-After": "1"},
            ) from exc
        decisions = []
        for take, values in zip(takes, raw, strict=False):
            allowed, remaining, retry_ms, reset_ms = (int(v) for v in values)
            if take.cost or not allowed:
                # A look that finds a token decided nothing worth counting.
                self._observe(take.bucket, "allowed" if allowed else "limited")
            decisions.append(
                Decision(bool(allowed), take.limit, remaining, max(0, retry_ms), max(0, reset_ms))
            )
        return decisions

    async def _take_in_order(self, takes: tuple[Take, ...]) -> list[list[int]]:
        """The script's answers for ``takes``: one call, or on a cluster one per owner."""
        calls = [list(takes)]
        if self._one_owner_per_call:
            calls = [list(same) for _, same in itertools.groupby(takes, key=_owner)]
        answers: list[list[int]] = []
        for call in calls:
            answer = await self._script(
                keys=[bucket_key(take.bucket) for take in call],
                args=[v for take in call for v in (take.limit, take.per_token_ms, take.cost)],
            )
            answers.extend(answer)
            if len(answer) < len(call) or not int(answer[-1][0]):
                break  # a bucket refused: the later ones are left untouched
        return answers

    async def enforce(self, bucket: str, *, limit: int, window_s: int, what: str) -> Decision:
        """Like :meth:`take`, but raise :class:`RateLimited` with the 429 headers when empty."""
        take = Take(bucket, limit, window_s)
        (decision,) = await self.take_in_order(take)
        if decision.allowed:
            return decision
        raise refusal(take, decision, what)
