"""Databases of a test's own on the session's PostgreSQL, migrated to a chosen point."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from yarl import URL

from store.migrate import migrate_url, migration_files


@contextlib.asynccontextmanager
async def scratch_database(server_url: str) -> AsyncIterator[str]:
    """A new, empty database next to ``server_url``'s; dropped afterwards (with whatever a
    killed child left connected to it)."""
    name = f"scratch_{uuid.uuid4().hex[:12]}"
    server = URL(server_url)
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield str(server.with_path(f"/{name}").with_query(server.query))
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def migrate_all_but_last(database_url: str) -> str:
    """Apply and record every bundled migration but the last, as a release ago would have
    left the database; return the name of the one left out."""
    *earlier, (last, _sql) = migration_files()
    conn = await asyncpg.connect(database_url)
    try:
        # The table as store/migrate.py creates it (only its ``name`` column is read back).
        await conn.execute(
            """CREATE TABLE schema_migrations (
                   name text PRIMARY KEY,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        for name, sql in earlier:
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
    finally:
        await conn.close()
    return last


async def migrate_as_a_newer_release(database_url: str, newer: str) -> None:
    """Apply every bundled migration and record ``newer`` as applied too, as the next release's
    migrate Job would have left the database before its rollout was rolled back."""
    await migrate_url(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", newer)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def every_connection_held(pool: asyncpg.Pool) -> AsyncIterator[list[PoolConnectionProxy]]:
    """Every connection ``pool`` may open, taken and kept for the ``async with`` block, as a
    burst of requests holds them: a query through the pool meanwhile waits for one."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(pool.acquire()) for _ in range(pool.get_max_size())]
