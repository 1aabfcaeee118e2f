"""Retention: what the store consumer deletes once it is no longer anyone's.

Run by the store consumer every so often, like the reaper, in bounded batches (``limit`` rows
a statement, oldest first, ``SKIP LOCKED`` so that consumers share the work).

- Idempotency keys: a binding answers a repeated ``Idempotency-Key`` for 24 hours
  (:func:`store.runs.claim_idempotency_key`) and is dead after that, so it is deleted then.
- Runs (``RETENTION_RUNS_DAYS``, off by default: they are the caller's): a terminal run that
  ended that many days ago, with its ``applied_events``, its stored files (rows and blobs), its
  package and its Idempotency-Key binding.
- Input files (``RETENTION_INPUT_FILES_DAYS``, off by default): the uploaded input files of
  terminal runs, stored that many days ago (rows and blobs); the run stays.
- Packages (``RETENTION_PACKAGES_DAYS``, off by default): a job download package nobody asked
  for in that many days (its row; the ZIP is never stored, it is streamed on each fetch). A
  later request makes a new package, with a new id.

Blobs go before their rows, in the same pass: a row is deleted only once every blob it names
is gone (a blob that is already missing counts as gone), so a blob whose delete failed keeps
its row, and the next pass tries again. Nothing is left dangling: no blob without a row, and
no row kept past its age but for a blob store that keeps failing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import asyncpg
import structlog

log = structlog.get_logger(__name__)

# How long an Idempotency-Key binding answers (store.runs.claim_idempotency_key).
IDEMPOTENCY_KEY_LIFETIME_S = 24 * 3600
# Rows a statement deletes at most, per kind and pass.
DEFAULT_LIMIT = 500

# What agent_gateway_store_retention_deleted_total{kind} counts.
RETENTION_KINDS = ("idempotency_keys", "runs", "input_files", "packages")

_TERMINAL_SQL = "('completed', 'failed', 'cancelled')"


class BlobDeleter(Protocol):
    """The one thing retention asks of the blob store (gateway.storage.blobs.BlobStore)."""

    async def delete(self, key: str) -> None:
        """Remove the blob; nothing happens when there is none; raises when the store fails."""
        ...


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How many days each kind is kept (0: forever) and how many rows a pass deletes at most."""

    runs_days: int = 0
    input_files_days: int = 0
    packages_days: int = 0
    limit: int = DEFAULT_LIMIT


async def expire_idempotency_keys(pool: asyncpg.Pool, *, limit: int = DEFAULT_LIMIT) -> int:
    """Delete up to ``limit`` Idempotency-Key bindings older than their lifetime; how many."""
    deleted = await pool.fetchval(
        """WITH expired AS (
               SELECT agent_id, key FROM idempotency_keys
               WHERE created_at < now() - make_interval(secs => $1)
               ORDER BY created_at
               LIMIT $2
               FOR UPDATE SKIP LOCKED)
           , gone AS (
               DELETE FROM idempotency_keys i USING expired e
               WHERE i.agent_id = e.agent_id AND i.key = e.key
                 AND i.created_at < now() - make_interval(secs => $1)
               RETURNING 1)
           SELECT count(*) FROM gone""",
        float(IDEMPOTENCY_KEY_LIFETIME_S),
        limit,
    )
    return int(deleted)


async def _delete_blobs(blobs: BlobDeleter, owned: list[tuple[int, str]]) -> set[int]:
    """Delete each ``(owner, key)`` blob; the owners with a blob that could not be deleted."""
    failed: set[int] = set()
    for owner, key in owned:
        if owner in failed:
            continue
        try:
            await blobs.delete(key)
        except Exception as exc:
            # Any failure of the store: the row stays, and the next pass tries again.
            failed.add(owner)
            log.warning("retention_blob_delete_failed", blob_key=key, error=str(exc))
    return failed


async def expire_runs(
    pool: asyncpg.Pool, blobs: BlobDeleter, *, days: int, limit: int = DEFAULT_LIMIT
) -> int:
    """Delete up to ``limit`` terminal runs that ended more than ``days`` days ago, with their
    applied events, stored files (blobs first) and package; how many runs. ``days`` 0: none."""
    if days <= 0:
        return 0
    async with pool.acquire() as conn, conn.transaction():
        ids = [
            row["id"]
            for row in await conn.fetch(
                f"""SELECT id FROM runs
                    WHERE status IN {_TERMINAL_SQL}
                      AND coalesce(completed_at, updated_at) < now() - make_interval(days => $1)
                    ORDER BY coalesce(completed_at, updated_at)
                    LIMIT $2
                    FOR UPDATE SKIP LOCKED""",
                days,
                limit,
            )
        ]
        if not ids:
            return 0
        files = await conn.fetch(
            "SELECT run_id, blob_key FROM run_files WHERE run_id = ANY($1::bigint[]) ORDER BY id",
            ids,
        )
        failed = await _delete_blobs(blobs, [(row["run_id"], row["blob_key"]) for row in files])
        gone = [run_id for run_id in ids if run_id not in failed]
        if not gone:
            return 0
        await conn.execute("DELETE FROM applied_events WHERE run_id = ANY($1::bigint[])", gone)
        # run_files, packages and idempotency_keys go with the run (ON DELETE CASCADE).
        status = await conn.execute("DELETE FROM runs WHERE id = ANY($1::bigint[])", gone)
    return int(status.split()[-1])


async def expire_input_files(
    pool: asyncpg.Pool, blobs: BlobDeleter, *, days: int, limit: int = DEFAULT_LIMIT
) -> int:
    """Delete up to ``limit`` input files of terminal runs stored more than ``days`` days ago,
    blob first, then row; how many rows. ``days`` 0: none."""
    if days <= 0:
        return 0
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            f"""SELECT f.id, f.blob_key FROM run_files f JOIN runs r ON r.id = f.run_id
                WHERE f.kind = 'input' AND r.status IN {_TERMINAL_SQL}
                  AND f.created_at < now() - make_interval(days => $1)
                ORDER BY f.created_at
                LIMIT $2
                FOR UPDATE OF f SKIP LOCKED""",
            days,
            limit,
        )
        if not rows:
            return 0
        failed = await _delete_blobs(blobs, [(row["id"], row["blob_key"]) for row in rows])
        gone = [row["id"] for row in rows if row["id"] not in failed]
        if not gone:
            return 0
        status = await conn.execute("DELETE FROM run_files WHERE id = ANY($1::bigint[])", gone)
    return int(status.split()[-1])


async def expire_packages(pool: asyncpg.Pool, *, days: int, limit: int = DEFAULT_LIMIT) -> int:
    """Delete up to ``limit`` download packages last asked for more than ``days`` days ago (no
    blob: the ZIP is never stored); how many. ``days`` 0: none."""
    if days <= 0:
        return 0
    deleted = await pool.fetchval(
        """WITH expired AS (
               SELECT id FROM packages
               WHERE last_requested_at < now() - make_interval(days => $1)
               ORDER BY last_requested_at
               LIMIT $2
               FOR UPDATE SKIP LOCKED)
           , gone AS (
               DELETE FROM packages p USING expired e
               WHERE p.id = e.id
                 AND p.last_requested_at < now() - make_interval(days => $1)
               RETURNING 1)
           SELECT count(*) FROM gone""",
        days,
        limit,
    )
    return int(deleted)
