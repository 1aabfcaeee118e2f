"""The SQL for a run's stored files (``run_files``: its inputs, and outputs) and the run input
that names them."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from store.pool import Executor

_COLUMNS = """id, run_id, org_id, field, position, name, mime_type, size_bytes, sha256, blob_key,
    created_at, kind"""

# What a stored file is to its run (migration 0004).
INPUT = "input"
OUTPUT = "output"


@dataclass(frozen=True, slots=True)
class RunFile:
    """A stored file of a run (``kind``: ``input`` or ``output``), kept in the blob store under
    ``blob_key``."""

    id: int
    run_id: int
    org_id: uuid.UUID
    field: str
    position: int
    name: str
    mime_type: str
    size_bytes: int
    sha256: str
    blob_key: str
    created_at: dt.datetime
    kind: str = INPUT


def _file(row: asyncpg.Record) -> RunFile:
    return RunFile(**dict(row))


async def insert_run_file(
    db: Executor,
    *,
    run_id: int,
    org_id: uuid.UUID,
    field: str,
    position: int,
    name: str,
    mime_type: str,
    size_bytes: int,
    sha256: str,
    blob_key: str,
    kind: str = INPUT,
) -> RunFile:
    """Record a stored file (a second write of the same key replaces the record)."""
    row = await db.fetchrow(
        f"""INSERT INTO run_files (run_id, org_id, field, position, name, mime_type,
                                   size_bytes, sha256, blob_key, kind)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
            ON CONFLICT (blob_key) DO UPDATE SET name = EXCLUDED.name,
                mime_type = EXCLUDED.mime_type, size_bytes = EXCLUDED.size_bytes,
                sha256 = EXCLUDED.sha256
            RETURNING {_COLUMNS}""",
        run_id,
        org_id,
        field,
        position,
        name,
        mime_type,
        size_bytes,
        sha256,
        blob_key,
        kind,
    )
    assert row is not None
    return _file(row)


async def get_run_file_by_key(db: Executor, blob_key: str) -> RunFile | None:
    """The stored file with ``blob_key``, if any."""
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM run_files WHERE blob_key = $1", blob_key)
    return None if row is None else _file(row)


async def list_run_files(db: Executor, run_id: int) -> list[RunFile]:
    """A run's stored files (inputs and outputs), in the order they were stored."""
    rows = await db.fetch(f"SELECT {_COLUMNS} FROM run_files WHERE run_id = $1 ORDER BY id", run_id)
    return [_file(row) for row in rows]


async def set_run_input(db: Executor, run_id: int, input_data: dict[str, Any]) -> None:
    """Replace a run's recorded input (once its files are stored and can be named)."""
    await db.execute(
        "UPDATE runs SET input = $2, updated_at = now() WHERE id = $1", run_id, input_data
    )
