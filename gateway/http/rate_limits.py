"""The per-agent token buckets a handler takes from before it starts work.

Each bucket is named once here, with its settings and the words its 429 uses, so handlers
say *which* bucket and nothing else.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web

from gateway.http.keys import KEY_GUARD, KEY_GUARD_PENDING, RATE_LIMITER, SETTINGS
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


_AnyHandler = TypeVar("_AnyHandler", bound=Callable[[web.Request], Awaitable[web.StreamResponse]])
_GUARD_WITH_TOKEN: set[Callable[..., object]] = set()


def checks_key_guard_with_its_token(handler: _AnyHandler) -> _AnyHandler:
    """Mark a handler whose token take also looks at the key guard, in one Redis call.

    The handler must take its token (:func:`take_token`) before it changes anything: until
    then its work is only reads, and ``guard_keys`` looks at the guard itself on any answer
    given without a take (an error, a replay), so an address over its failed-key limit is
    refused 429 whatever its key, as on every other route.
    """
    _GUARD_WITH_TOKEN.add(handler)
    return handler


def guard_waits_for_token(handler: Callable[..., object]) -> bool:
    """Whether ``handler``'s token take looks at the key guard (see above)."""
    return handler in _GUARD_WITH_TOKEN


async def take_token(request: web.Request, bucket: AgentBucket, agent_id: int) -> Decision:
    """Take one token from ``agent_id``'s ``bucket``; 429 (with ``Retry-After``) when empty.

    When the key guard's look at the caller's address is pending, it is made first in the same
    Redis call: an address over its failed-key limit is refused before any token is taken.
    """
    limit, window_s = bucket.policy(request.app[SETTINGS])
    take = Take(f"agent:{agent_id}:{bucket.name}", limit, window_s)
    address = request.pop(KEY_GUARD_PENDING, None)
    if address is None:
        (decision,) = await request.app[RATE_LIMITER].take_in_order(take)
    else:
        guard = request.config_dict[KEY_GUARD]
        decisions = await request.app[RATE_LIMITER].take_in_order(guard.look(address), take)
        if not decisions[0].allowed:
            raise guard.refusal(decisions[0])
        decision = decisions[1]
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
