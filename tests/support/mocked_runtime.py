"""aioresponses for adapter unit tests: a mocked runtime.

aioresponses 0.7.9 builds ``ClientResponse`` without the ``stream_writer`` argument that
aiohttp 3.14 requires (aioresponses issue #289, fix pending upstream). A response class that
supplies it keeps the mocks working without pinning aiohttp below its security release.
"""

from __future__ import annotations

from typing import Any
from unittest.mock import Mock

import aiohttp
from aioresponses import aioresponses
from yarl import URL


class MockedResponse(aiohttp.ClientResponse):
    """A ``ClientResponse`` that tolerates being built without a stream writer."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", Mock(output_size=0))
        super().__init__(method, url, **kwargs)


class MockedRuntime(aioresponses):  # type: ignore[misc]
    """``aioresponses`` whose responses default to :class:`MockedResponse`."""

    def add(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", MockedResponse)
        super().add(*args, **kwargs)
