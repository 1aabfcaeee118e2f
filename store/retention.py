"""Retention: what the store consumer deletes once it is no longer anyone's.

Run by the store consumer every so often, like the reaper, in bounded batches (``limit`` rows
a statement, oldest first, ``SKIP LOCKED`` so that consumers share the work).

Only idempotency keys so far: a binding answers a repeated ``Idempotency-Key`` for 24 hours
(:func:`store.runs.claim_idempotency_key`) and is dead after that, so it is deleted then.
"""

from __future__ import annotations

import asyncpg

# How long an Idempotency-Key binding answers (store.runs.claim_idempotency_key).
IDEMPOTENCY_KEY_LIFETIME_S = 24 * 3600


async def expire_idempotency_keys(pool: asyncpg.Pool, *, limit: int = 500) -> int:
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
