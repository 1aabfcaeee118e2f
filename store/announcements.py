"""Announcing that runs ended, to the waiters of every replica (Redis pub/sub).

Best effort: a waiter that misses an announcement finds the end at its next recheck.
"""

from __future__ import annotations

import structlog
from redis.exceptions import RedisError

from store.redis_client import RedisClient

log = structlog.get_logger(__name__)


def terminal_channel(prefix: str) -> str:
    """The channel on which the ids of runs that just became terminal are announced."""
    return f"{prefix}:terminal"


def parse_announcement(data: object) -> list[int]:
    """The run ids one announcement names (comma-separated); nothing from a stray message."""
    if isinstance(data, bytes):
        data = data.decode("ascii", "replace")
    if not isinstance(data, str):
        return []
    try:
        return [int(part) for part in data.split(",") if part]
    except ValueError:
        return []


async def announce_terminal(redis: RedisClient, prefix: str, run_ids: list[int]) -> None:
    """Wake whoever waits for these runs, on every replica: one message for all of them."""
    if not run_ids:
        return
    try:
        await redis.publish(terminal_channel(prefix), ",".join(map(str, run_ids)))
    except (RedisError, OSError) as exc:
        log.warning("terminal_announce_failed", run_ids=run_ids, error=str(exc))
