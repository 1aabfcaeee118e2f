"""Migrations apply in order, once, and are recorded."""

from __future__ import annotations

from store.migrate import migrate_url, migration_files
from tests.support.backends import Backends


async def test_migrating_again_applies_nothing(backends: Backends) -> None:
    assert await migrate_url(backends.database_url) == []


def test_migrations_are_ordered_plain_sql_files() -> None:
    names = [name for name, _sql in migration_files()]
    assert names == sorted(names)
    assert names[0] == "0001_initial.sql"
