"""Plain-SQL migrations, applied in file-name order and recorded in ``schema_migrations``."""

from __future__ import annotations

from importlib import resources

import asyncpg

# Any constant works; it only has to be the same for every process that migrates.
_MIGRATION_LOCK_ID = 7_041_775_301


def migration_files() -> list[tuple[str, str]]:
    """The bundled migrations as ``(name, sql)``, in the order they apply."""
    folder = resources.files("store") / "migrations"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name, (folder / name).read_text(encoding="utf-8")) for name in names]


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply every migration not yet recorded; return the names applied now.

    An advisory lock makes concurrent starts (several replicas) safe.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_ID)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   name text PRIMARY KEY,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        applied: list[str] = []
        for name, sql in migration_files():
            if name in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
            applied.append(name)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_ID)


async def migrate_url(database_url: str) -> list[str]:
    """Connect to ``database_url``, migrate, disconnect."""
    conn = await asyncpg.connect(database_url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
