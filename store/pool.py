"""The asyncpg pool, with JSON columns decoded to Python values and a bounded acquire."""

from __future__ import annotations

from typing import Any

import asyncpg
from asyncpg.pool import PoolAcquireContext, PoolConnectionProxy

from store import jsonb

# Anything a query can run on: the pool, a connection, or one taken from the pool.
Executor = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy

# A statement still running after this long is given up (every connection this module opens).
_COMMAND_TIMEOUT_S = 30


async def _init_connection(conn: asyncpg.Connection) -> None:
    # orjson where it reads and writes as json does (store/jsonb.py): every run row read
    # and written passes through these.
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=jsonb.dumps, decoder=jsonb.loads, schema="pg_catalog"
        )


async def _rollback_if_in_transaction(conn: asyncpg.Connection) -> None:
    """What a released connection needs here: nothing uses session state (no LISTEN, no
    advisory locks, no SET), so asyncpg's default reset (a round trip of RESET ALL, UNLISTEN,
    CLOSE ALL and unlocks on every release) is only paid when a transaction was left open."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


class BoundedPool(asyncpg.Pool):
    """A pool whose every acquire gives up after ``acquire_timeout_s`` (``TimeoutError``).

    asyncpg's ``pool.fetch(...)`` and the like acquire without a timeout: on a saturated pool a
    request would wait forever. Here an acquire that names no timeout takes the pool's, so
    every query, through the pool or a connection taken from it, fails within it; the HTTP
    middleware answers that ``TimeoutError`` as a 503 with ``Retry-After``.
    """

    def __init__(self, *args: Any, acquire_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acquire_timeout_s = acquire_timeout_s

    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext:
        return super().acquire(timeout=self.acquire_timeout_s if timeout is None else timeout)


async def create_pool(
    database_url: str,
    *,
    min_size: int = 2,
    max_size: int = 20,
    acquire_timeout_s: float = 5.0,
) -> asyncpg.Pool:
    """Open a pool whose connections read and write ``json``/``jsonb`` as Python values, and
    whose acquires give up after ``acquire_timeout_s`` (the ``DB_POOL_ACQUIRE_TIMEOUT_S``
    setting): a :class:`BoundedPool`."""
    # What asyncpg.create_pool passes for what is not given here (it has no pool_class).
    pool = BoundedPool(
        database_url,
        acquire_timeout_s=acquire_timeout_s,
        min_size=min_size,
        max_size=max_size,
        max_queries=50000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        init=_init_connection,
        reset=_rollback_if_in_transaction,
        # A dead server must surface as an error quickly, not as a hang.
        timeout=10,
        command_timeout=_COMMAND_TIMEOUT_S,
    )
    await pool
    return pool


async def connect(
    database_url: str, *, connect_timeout_s: float, application_name: str
) -> asyncpg.Connection:
    """One connection of its own, outside any pool: opened as the pool opens its connections
    (the same DSN, so the same host, credentials and TLS, and the same command timeout), named
    ``application_name`` in ``pg_stat_activity``, and given up after ``connect_timeout_s`` seconds.

    Without the pool's ``json``/``jsonb`` codecs: for statements that read no JSON (the
    dependency probe's ``SELECT 1``)."""
    return await asyncpg.connect(
        database_url,
        timeout=connect_timeout_s,
        command_timeout=_COMMAND_TIMEOUT_S,
        server_settings={"application_name": application_name},
    )
