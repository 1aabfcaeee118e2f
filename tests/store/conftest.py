"""Fixtures shared by the store's tests: an agent to hang runs on, and a way to make runs."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg
import pytest

from store import queries
from store.models import Agent


@pytest.fixture
async def agent(db: asyncpg.Pool) -> Agent:
    """An agent straight in the store (no gateway needed)."""
    org_id = await queries.create_org(db, "Store tests")
    return await queries.create_agent(
        db,
        org_id,
        b"salt",
        uuid.uuid4().bytes,
        {"name": "a", "runtime": {"kind": "n8n", "webhook_url": "http://127.0.0.1:9/"}},
    )


async def new_run(db: asyncpg.Pool, agent: Agent) -> int:
    """A queued run of ``agent``; its id."""
    run = await queries.insert_run(
        db,
        agent=agent,
        input_data={},
        created_by=None,
        deadline=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
        trigger_kind="test",
    )
    return run.id
