"""The asyncpg pool, with JSON columns decoded to Python values."""

from __future__ import annotations

import json

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# Anything a query can run on: the pool, a connection, or one taken from the pool.
Executor = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def _rollback_if_in_transaction(conn: asyncpg.Connection) -> None:
    """What a released connection needs here: nothing uses session state (no LISTEN, no
    advisory locks, no SET), so asyncpg's default reset (a round trip of RESET ALL, UNLISTEN,
    CLOSE ALL and unlocks on every release) is only paid when a transaction was left open."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_pool(database_url: str, *, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    """Open a pool whose connections read and write ``json``/``jsonb`` as Python values."""
    pool = await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_rollback_if_in_transaction,
        # A dead server must surface as an error quickly, not as a hang.
        timeout=10,
        command_timeout=30,
    )
    assert pool is not None
    return pool
