"""Runs made straight in the store (no gateway needed), for the store's own tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import asyncpg

from store import agents, orgs, runs
from store.enums import RunStatus
from store.models import Agent


async def store_agent(db: asyncpg.Pool) -> Agent:
    """An agent straight in the store, in an organisation of its own (no gateway needed)."""
    org_id = await orgs.create_org(db, "Store tests")
    return await agents.create_agent(
        db,
        org_id,
        b"salt",
        uuid.uuid4().bytes,
        {"name": "a", "runtime": {"kind": "n8n", "webhook_url": "http://127.0.0.1:9/"}},
    )


async def new_run(db: asyncpg.Pool, agent: Agent) -> int:
    """A queued run of ``agent``; its id."""
    run = await runs.insert_run(
        db,
        agent=agent,
        input_data={},
        created_by=None,
        deadline=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
        trigger_kind="test",
    )
    return run.id


async def new_runs(
    db: asyncpg.Pool, agent: Agent, count: int, *, status: RunStatus = RunStatus.QUEUED
) -> list[int]:
    """``count`` runs of ``agent`` in ``status``, inserted in one statement (as a burst of
    calls would leave them); their ids, in order."""
    rows = await db.fetch(
        """INSERT INTO runs (agent_id, org_id, deadline, trigger_kind, status, completed_at)
           SELECT $1, $2, now() + interval '5 minutes', 'test', $3,
                  CASE WHEN $4::boolean THEN now() END
           FROM generate_series(1, $5) RETURNING id""",
        agent.id,
        agent.org_id,
        status,
        status.terminal,
        count,
    )
    return sorted(int(row["id"]) for row in rows)


async def wait_until_past(db: asyncpg.Pool, run_id: int, *, seconds_after_creation: float) -> None:
    """Return once the database's clock, the one the reaper reads, is ``seconds_after_creation``
    past the run's creation (bounded)."""
    for _ in range(600):
        if await db.fetchval(
            "SELECT now() > created_at + make_interval(secs => $2) FROM runs WHERE id = $1",
            run_id,
            seconds_after_creation,
        ):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id}: {seconds_after_creation} s never passed")
