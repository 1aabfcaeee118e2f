"""How many large execute bodies one replica reads at a time.

A large body (``EXECUTE_LARGE_BODY_BYTES``) is read, parsed and its files decoded and stored
while it holds one of ``EXECUTE_MAX_LARGE_BODIES`` slots; a request that finds none free is
answered 503 with ``Retry-After`` before its body is read. Per replica: memory is per replica.

Domain code: no ``aiohttp.web`` here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from gateway.errors import ServiceUnavailable

RETRY_AFTER_S = 1


class LargeBodySlots:
    """A counter of slots, taken without waiting (a caller waiting would hold its socket)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._free = size

    @property
    def in_use(self) -> int:
        """Slots held now."""
        return self._size - self._free

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold a slot for the block; 503 when none is free."""
        if self._free <= 0:
            raise ServiceUnavailable(
                f"This replica is already reading {self._size} large execute bodies; "
                "retry shortly (EXECUTE_MAX_LARGE_BODIES)",
                extra={"limit": {"setting": "EXECUTE_MAX_LARGE_BODIES", "value": self._size}},
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self._free -= 1
        try:
            yield
        finally:
            self._free += 1
