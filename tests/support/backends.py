"""The session's PostgreSQL and Redis (the ``backends`` fixture starts or takes them)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from store.redis_client import RedisClient, connect_redis


@dataclass(frozen=True)
class Backends:
    """Where the session's PostgreSQL and Redis listen.

    ``redis_cluster``: ``redis_url`` names one node of a Redis Cluster (``TEST_REDIS=cluster``
    starts one, or ``REDIS_URL`` with ``REDIS_CLUSTER=true`` names one to use).
    """

    database_url: str
    redis_url: str
    redis_cluster: bool = False

    def redis(self) -> RedisClient:
        """A client for the session's Redis, a cluster client on a cluster: tests build
        theirs here, never with ``Redis.from_url``, so that a cluster pass reaches every one."""
        return connect_redis(self.redis_url, cluster=self.redis_cluster)


def wants_cluster() -> bool:
    """Whether this session runs against a Redis Cluster (``TEST_REDIS=cluster``, or a given
    ``REDIS_URL`` with ``REDIS_CLUSTER`` true)."""
    if os.environ.get("TEST_REDIS", "").strip().lower() == "cluster":
        return True
    return bool(os.environ.get("REDIS_URL")) and os.environ.get(
        "REDIS_CLUSTER", ""
    ).strip().lower() in {"1", "true", "yes", "on"}
