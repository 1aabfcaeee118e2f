"""Runs made straight in the store (no gateway needed), for the store's own tests."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg

from store import runs
from store.models import Agent


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
