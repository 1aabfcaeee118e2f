"""The one place a production Redis client is built: one server, or a Redis Cluster.

``REDIS_URL`` names the server; with ``REDIS_CLUSTER=true`` it names one node of a Redis
Cluster and the client is redis-py's ``RedisCluster``, which learns the other nodes and the
slots each owns from that one. Code that takes a client types it as :data:`RedisClient` and
uses only what both clients offer (commands, ``register_script``, ``pipeline(transaction=
False)``, ``pubsub``). On a cluster every key a script or transaction touches together must
share a hash tag (the part of the key in ``{…}``), so that they hash to one slot:
:func:`tagged` builds such keys.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

RedisClient: TypeAlias = Redis | RedisCluster

# Slots of a Redis Cluster (CLUSTER KEYSLOT answers 0 … 16383).
CLUSTER_SLOTS = 16384


def connect_redis(
    url: str,
    *,
    cluster: bool,
    max_connections: int | None = None,
    wait_for_connection_s: float | None = None,
    socket_connect_timeout: float | None = 2.0,
    socket_timeout: float | None = None,
    health_check_interval: float = 0,
) -> RedisClient:
    """A client for ``url``: a single server, or, with ``cluster``, the cluster it is a node of.

    ``max_connections`` bounds the connections to one server (to each node of a cluster).
    ``wait_for_connection_s`` (single server only) makes a command wait that long for a free
    connection rather than fail at once past the bound: redis-py's cluster client has no
    waiting pool, so on a cluster a command past the bound on one node fails at once
    (``MaxConnectionsError``, a ``ConnectionError``) and callers treat it like Redis away.
    Nothing connects until the first command.
    """
    if cluster:
        return RedisCluster.from_url(
            url,
            max_connections=max_connections or 100,
            socket_connect_timeout=socket_connect_timeout,
            socket_timeout=socket_timeout,
            health_check_interval=health_check_interval,
        )
    if wait_for_connection_s is not None:
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections or 100,
            timeout=wait_for_connection_s,
            socket_connect_timeout=socket_connect_timeout,
            socket_timeout=socket_timeout,
            health_check_interval=health_check_interval,
        )
        return Redis.from_pool(pool)
    options: dict[str, Any] = {
        "socket_connect_timeout": socket_connect_timeout,
        "socket_timeout": socket_timeout,
        "health_check_interval": health_check_interval,
    }
    if max_connections is not None:
        options["max_connections"] = max_connections
    return Redis.from_url(url, **options)


def tagged(tag: str, *rest: str) -> str:
    """``tag`` as a hash tag followed by ``rest``: ``tagged("agent:17", "trigger")`` is
    ``{agent:17}:trigger``. Keys with the same tag hash to the same cluster slot."""
    if "{" in tag or "}" in tag:
        raise ValueError(f"a hash tag cannot hold braces: {tag!r}")
    return ":".join([f"{{{tag}}}", *rest])


def slot_of(key: str) -> int:
    """The cluster slot ``key`` hashes to (its hash tag's, when it has one)."""
    return int(key_slot(key.encode()))
