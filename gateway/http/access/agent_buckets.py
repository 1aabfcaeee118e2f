"""The per-agent token buckets a handler takes from before it starts work.

Each bucket is named once here, with its settings and the words its 429 uses, so handlers
say *which* bucket and nothing else.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from gateway.http.access.authentication import KeyGuardStep
from gateway.http.app_keys import RATE_LIMITER, SETTINGS
from gateway.security.ratelimit import Decision, Take, refusal
from gateway.settings import Settings


@dataclass(frozen=True, slots=True)
class AgentBucket:
    """One kind of per-agent bucket: its key, what a 429 calls it, and its limit and window."""

    name: str
    what: str
    policy: Callable[[Settings], tuple[int, int]]


TRIGGERS = AgentBucket(
    "trigger",
    "this agent's triggers",
    lambda s: (s.trigger_rate_limit, s.trigger_rate_window_s),
)
# trigger-and-wait and trigger-and-download share one bucket per agent.
SYNC_RUNS = AgentBucket("sync", "this agent", lambda s: (s.sync_rate_limit, s.sync_rate_window_s))
# register and ingest share one, wide enough for a busy runtime.
RUN_REPORTS = AgentBucket(
    "report",
    "this agent's run reports",
    lambda s: (s.report_rate_limit, s.report_rate_window_s),
)
# Callbacks (started, output, waiting) of all of an agent's runs; taken before the body is read.
CALLBACKS = AgentBucket(
    "callback",
    "this agent's callbacks",
    lambda s: (s.callback_rate_limit, s.callback_rate_window_s),
)
EXECUTIONS = AgentBucket(
    "execute",
    "this workflow's executions",
    lambda s: (s.execute_rate_limit, s.execute_rate_window_s),
)


async def take_token(
    request: web.Request,
    bucket: AgentBucket,
    agent_id: int,
    *,
    guard: KeyGuardStep | None = None,
) -> Decision:
    """Take one token from ``agent_id``'s ``bucket``; 429 (with ``Retry-After``) when empty.

    With the handler's key guard step whose look waits for this take, the look is made first
    in the same Redis call: an address over its failed-key limit is refused before any token is
    taken.
    """
    limit, window_s = bucket.policy(request.app[SETTINGS])
    take = Take(f"agent:{agent_id}:{bucket.name}", limit, window_s)
    limiter = request.app[RATE_LIMITER]
    if guard is None:
        (decision,) = await limiter.take_in_order(take)
    else:
        decision = await guard.take(limiter, take)
    if not decision.allowed:
        raise refusal(take, decision, bucket.what)
    return decision


async def look_at_bucket(request: web.Request, bucket: AgentBucket, agent_id: int) -> Decision:
    """What ``agent_id``'s ``bucket`` holds now, taking nothing."""
    limit, window_s = bucket.policy(request.app[SETTINGS])
    return await request.app[RATE_LIMITER].take(
        f"agent:{agent_id}:{bucket.name}", limit=limit, window_s=window_s, cost=0
    )


def bucket_window_s(request: web.Request, bucket: AgentBucket) -> int:
    """The bucket's window, in seconds."""
    return bucket.policy(request.app[SETTINGS])[1]


def reset_s(decision: Decision) -> int:
    """Seconds until the bucket answers again: the next token when empty, else a full bucket."""
    wait_ms = decision.retry_after_ms if decision.remaining < 1 else decision.reset_ms
    return max(0, math.ceil(wait_ms / 1000))


def rate_limit_headers(decision: Decision, window_s: int) -> dict[str, str]:
    """The bucket as the IETF headers and the ``x-ratelimit-*`` headers Sim's SDKs read.

    ``x-ratelimit-reset`` is a Unix time in whole seconds: both SDKs parse it as an integer.
    """
    reset = reset_s(decision)
    remaining = max(0, decision.remaining)
    return {
        "RateLimit-Policy": f"{decision.limit};w={window_s}",
        "RateLimit": f"limit={decision.limit}, remaining={remaining}, reset={reset}",
        "X-RateLimit-Limit": str(decision.limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(math.ceil(time.time()) + reset),
    }
