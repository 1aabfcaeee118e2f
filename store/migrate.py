"""Plain-SQL migrations, applied in file-name order and recorded in ``schema_migrations``."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import asyncpg
import structlog

from store.pool import Executor

log = structlog.get_logger(__name__)

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


@dataclass(frozen=True)
class MigrationStatus:
    """How the database's recorded migrations compare with the ones bundled with this code."""

    applied: tuple[str, ...]
    """Bundled and recorded, in the order they apply."""
    pending: tuple[str, ...]
    """Bundled but not recorded: the schema is older than this code expects."""
    unknown: tuple[str, ...]
    """Recorded but not bundled: a newer release migrated this database."""

    @property
    def up_to_date(self) -> bool:
        """Whether every bundled migration has been applied."""
        return not self.pending

    def as_json(self) -> dict[str, list[str]]:
        """The status as ``migrate --status`` prints it."""
        return {
            "applied": list(self.applied),
            "pending": list(self.pending),
            "unknown": list(self.unknown),
        }


class SchemaBehind(Exception):
    """The database lacks migrations this code needs: ``agent-gateway migrate`` has not run."""

    def __init__(self, pending: tuple[str, ...]) -> None:
        self.pending = pending
        super().__init__(
            f"the database is missing migrations {', '.join(pending)}: "
            "run 'agent-gateway migrate' first"
        )


async def migration_status(conn: Executor) -> MigrationStatus:
    """Compare ``schema_migrations`` with the bundled migrations (reads only, takes no lock)."""
    # A database never migrated has no table yet: everything is pending, and nothing is created.
    if await conn.fetchval("SELECT to_regclass('schema_migrations') IS NULL"):
        recorded: set[str] = set()
    else:
        recorded = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
    bundled = [name for name, _sql in migration_files()]
    return MigrationStatus(
        applied=tuple(name for name in bundled if name in recorded),
        pending=tuple(name for name in bundled if name not in recorded),
        unknown=tuple(sorted(recorded.difference(bundled))),
    )


async def migration_status_url(database_url: str) -> MigrationStatus:
    """Connect to ``database_url``, read the migration status, disconnect."""
    conn = await asyncpg.connect(database_url)
    try:
        return await migration_status(conn)
    finally:
        await conn.close()


async def check_schema(conn: Executor) -> MigrationStatus:
    """Refuse a schema older than this code; accept a newer one, with a warning.

    Raises :class:`SchemaBehind` when bundled migrations are not applied. Migrations this
    code does not know come from a newer release: under the expand/contract rule
    (docs/upgrading.md) they only add what older code ignores, so a rolled-back replica
    runs on them.
    """
    status = await migration_status(conn)
    if status.pending:
        raise SchemaBehind(status.pending)
    if status.unknown:
        log.warning("schema_newer_than_code", unknown_migrations=list(status.unknown))
    return status
