"""Fixtures shared by the store's tests: an agent to hang runs on (``new_run`` in
``tests/support/store_runs.py`` makes the runs)."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from store import agents, orgs
from store.models import Agent


@pytest.fixture
async def agent(db: asyncpg.Pool) -> Agent:
    """An agent straight in the store (no gateway needed)."""
    org_id = await orgs.create_org(db, "Store tests")
    return await agents.create_agent(
        db,
        org_id,
        b"salt",
        uuid.uuid4().bytes,
        {"name": "a", "runtime": {"kind": "n8n", "webhook_url": "http://127.0.0.1:9/"}},
    )
