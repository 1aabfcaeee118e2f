"""The reaper: no run stays in flight forever.

A run whose deadline has passed without a terminal state (its gateway replica died, its
runtime never reported back) is marked failed. It runs inside the store consumer process.
"""

from __future__ import annotations

import asyncpg

REAPED_ERROR = "Run deadline passed without a terminal state"


async def reap_overdue(pool: asyncpg.Pool, *, limit: int = 500) -> list[int]:
    """Fail up to ``limit`` overdue in-flight runs; return their ids."""
    rows = await pool.fetch(
        """UPDATE runs SET status = 'failed', error = $1, completed_at = now(),
               duration_ms = (EXTRACT(EPOCH FROM
                   (now() - COALESCE(started_at, created_at))) * 1000)::bigint,
               follow_at = NULL, updated_at = now()
           WHERE id IN (
               SELECT id FROM runs
               WHERE status IN ('queued', 'running', 'waiting') AND deadline < now()
               ORDER BY deadline
               LIMIT $2
               FOR UPDATE SKIP LOCKED)
             AND status IN ('queued', 'running', 'waiting')
           RETURNING id""",
        REAPED_ERROR,
        limit,
    )
    return [row["id"] for row in rows]
