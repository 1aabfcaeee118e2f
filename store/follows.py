"""Runs the gateway polls on the runtime's behalf (Trigger.dev): leases across replicas."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from store import agents
from store.pool import Executor


@dataclass(frozen=True, slots=True)
class FollowedRun:
    """A run whose runtime runs it on its own, claimed for one poll."""

    run_id: int
    agent_id: int
    status: str
    runtime: dict[str, Any]
    runtime_run_id: str
    attempts: int


async def start_following(
    db: Executor, run_id: int, runtime_run_id: str, *, first_poll_in_s: float
) -> None:
    """Record the runtime's id for a run and, while it is in flight, schedule its first poll.

    The id is kept even for a run that has already ended (cancelled while its trigger call was
    on its way): it is what asking the runtime to cancel needs.
    """
    await db.execute(
        """UPDATE runs SET runtime_run_id = $2,
               follow_at = CASE WHEN status IN ('queued', 'running', 'waiting')
                                THEN now() + make_interval(secs => $3) END,
               follow_attempts = 0, updated_at = now()
           WHERE id = $1""",
        run_id,
        runtime_run_id,
        first_poll_in_s,
    )


async def claim_runs_to_follow(db: Executor, *, lease_s: float, limit: int) -> list[FollowedRun]:
    """Claim up to ``limit`` runs whose poll is due; their next poll moves ``lease_s`` ahead
    so no other replica polls them meanwhile."""
    rows = await db.fetch(
        """UPDATE runs AS r
           SET follow_at = now() + make_interval(secs => $1),
               follow_attempts = r.follow_attempts + 1
           FROM agents AS a
           WHERE a.id = r.agent_id AND r.id IN (
               SELECT id FROM runs
               WHERE follow_at <= now() AND status IN ('queued', 'running', 'waiting')
               ORDER BY follow_at
               LIMIT $2
               FOR UPDATE SKIP LOCKED)
           RETURNING r.id, r.agent_id, r.status, a.runtime, a.runtime_secrets, r.runtime_run_id,
                     r.follow_attempts""",
        lease_s,
        limit,
    )
    return [_followed(row) for row in rows if row["runtime_run_id"]]


async def schedule_follow(db: Executor, run_id: int, *, in_s: float) -> None:
    """Set a followed run's next poll ``in_s`` seconds from now."""
    await db.execute(
        """UPDATE runs SET follow_at = now() + make_interval(secs => $2)
           WHERE id = $1 AND follow_at IS NOT NULL""",
        run_id,
        in_s,
    )


async def stop_following(db: Executor, run_id: int) -> None:
    """No more polls for this run (its end is recorded or on its way)."""
    await db.execute("UPDATE runs SET follow_at = NULL WHERE id = $1", run_id)


async def release_follows(db: Executor, run_ids: list[int]) -> None:
    """Make these followed runs due now, for any replica to take (this one is stopping)."""
    await db.execute(
        "UPDATE runs SET follow_at = now() WHERE id = ANY($1) AND follow_at IS NOT NULL", run_ids
    )


async def agents_of_runtime_kind(db: Executor, kind: str) -> list[tuple[int, dict[str, Any]]]:
    """Every agent whose runtime is of ``kind``, with its runtime config (archived ones too:
    their runs in flight are still followed)."""
    rows = await db.fetch(
        "SELECT id, runtime, runtime_secrets FROM agents WHERE runtime->>'kind' = $1", kind
    )
    return [
        (row["id"], agents.with_sealed(row["runtime"], row["id"], row["runtime_secrets"]))
        for row in rows
    ]


async def followed_by_runtime_ids(db: Executor, runtime_run_ids: list[str]) -> list[FollowedRun]:
    """The runs still followed among those the runtime names ``runtime_run_ids`` (not claimed:
    a feed that reports them changes nothing of their polls)."""
    rows = await db.fetch(
        """SELECT r.id, r.agent_id, r.status, a.runtime, a.runtime_secrets, r.runtime_run_id,
                  r.follow_attempts
           FROM runs AS r JOIN agents AS a ON a.id = r.agent_id
           WHERE r.runtime_run_id = ANY($1) AND r.follow_at IS NOT NULL
             AND r.status IN ('queued', 'running', 'waiting')""",
        runtime_run_ids,
    )
    return [_followed(row) for row in rows]


async def follow_agents_now(db: Executor, agent_ids: list[int]) -> None:
    """Make every followed run of these agents due now (their real-time feed went down: the
    polls take over at once)."""
    await db.execute(
        """UPDATE runs SET follow_at = now()
           WHERE agent_id = ANY($1) AND follow_at IS NOT NULL AND follow_at > now()""",
        agent_ids,
    )


def _followed(row: asyncpg.Record) -> FollowedRun:
    return FollowedRun(
        run_id=row["id"],
        agent_id=row["agent_id"],
        status=row["status"],
        runtime=agents.with_sealed(row["runtime"], row["agent_id"], row["runtime_secrets"]),
        runtime_run_id=row["runtime_run_id"],
        attempts=row["follow_attempts"],
    )
