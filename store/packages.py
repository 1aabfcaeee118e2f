"""The SQL for job download packages (``packages``): one stable id per run."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import asyncpg

from store.pool import Executor

_COLUMNS = "id, run_id, org_id, created_at, last_requested_at"


@dataclass(frozen=True, slots=True)
class Package:
    """A run's download package: the id its signed URLs name."""

    id: uuid.UUID
    run_id: int
    org_id: uuid.UUID
    created_at: dt.datetime
    last_requested_at: dt.datetime


def _package(row: asyncpg.Record) -> Package:
    return Package(**dict(row))


async def package_for_run(db: Executor, *, run_id: int, org_id: uuid.UUID) -> Package:
    """The run's package, created on the first request; later requests (however many arrive
    at once) get the same one."""
    row = await db.fetchrow(
        f"""INSERT INTO packages (id, run_id, org_id) VALUES ($1, $2, $3)
            ON CONFLICT (run_id) DO UPDATE SET last_requested_at = now()
            RETURNING {_COLUMNS}""",
        uuid.uuid4(),
        run_id,
        org_id,
    )
    assert row is not None
    return _package(row)


async def get_package(db: Executor, package_id: uuid.UUID) -> Package | None:
    """The package with ``package_id``, if any."""
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM packages WHERE id = $1", package_id)
    return None if row is None else _package(row)
