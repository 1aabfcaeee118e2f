"""Runs made straight in the store (no gateway needed), for the store's own tests."""

from __future__ import annotations

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
