"""Migrations apply in order, once, and are recorded."""

from __future__ import annotations

import asyncpg
import pytest

from store.migrate import (
    SchemaBehind,
    check_schema,
    migrate_url,
    migration_files,
    migration_status_url,
)
from tests.support.backends import Backends
from tests.support.databases import migrate_all_but_last, scratch_database


async def test_migrating_again_applies_nothing(backends: Backends) -> None:
    assert await migrate_url(backends.database_url) == []


def test_migrations_are_ordered_plain_sql_files() -> None:
    names = [name for name, _sql in migration_files()]
    assert names == sorted(names)
    assert names[0] == "0001_initial.sql"


async def test_a_database_never_migrated_has_everything_pending_and_is_left_untouched(
    backends: Backends,
) -> None:
    async with scratch_database(backends.database_url) as url:
        status = await migration_status_url(url)
        conn = await asyncpg.connect(url)
        try:
            tables = await conn.fetchval("SELECT to_regclass('schema_migrations')")
        finally:
            await conn.close()

    assert status.pending == tuple(name for name, _sql in migration_files())
    assert status.applied == status.unknown == ()
    assert not status.up_to_date
    assert tables is None


async def test_the_check_at_start_refuses_a_schema_behind_and_names_what_is_missing(
    backends: Backends,
) -> None:
    async with scratch_database(backends.database_url) as url:
        missing = await migrate_all_but_last(url)
        conn = await asyncpg.connect(url)
        try:
            with pytest.raises(SchemaBehind) as refused:
                await check_schema(conn)
        finally:
            await conn.close()

    assert refused.value.pending == (missing,)
    assert missing in str(refused.value)
    assert "agent-gateway migrate" in str(refused.value)
