"""Fixtures shared by the store's tests: an agent to hang runs on (``new_run`` in
``tests/support/store_runs.py`` makes the runs)."""

from __future__ import annotations

import asyncpg
import pytest

from store.models import Agent
from tests.support.store_runs import store_agent


@pytest.fixture
async def agent(db: asyncpg.Pool) -> Agent:
    """An agent straight in the store (no gateway needed)."""
    return await store_agent(db)
