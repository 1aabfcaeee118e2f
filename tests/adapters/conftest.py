"""aioresponses for adapter unit tests (``tests/support/mocked_runtime.py`` says why its
responses have their own class)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.mocked_runtime import MockedRuntime


@pytest.fixture
def mocked() -> Iterator[MockedRuntime]:
    """Intercept every request an aiohttp session makes during the test."""
    with MockedRuntime() as mock:
        yield mock
