"""Fixtures for tests that run the console script's processes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.support.backends import Backends
from tests.support.processes import process_env


@pytest.fixture
def env(backends: Backends) -> dict[str, str]:
    """The environment of one ``serve``/``consume`` pair, on free ports."""
    return process_env(backends)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client, as a caller of the deployed service."""
    async with aiohttp.ClientSession() as session:
        yield session
