"""Readiness: whether this replica should take traffic; the requests a drain waits for."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncpg


@dataclass(slots=True)
class Lifecycle:
    """Process state the readiness probe reports, and the requests a drain waits for.

    ``draining`` is set when SIGTERM arrives; ``cancelling`` once the drain timeout has passed
    and the requests still in flight are being cancelled (so that they can say why).
    """

    draining: bool = False
    cancelling: bool = False
    in_flight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def __post_init__(self) -> None:
        self._idle.set()

    def request_started(self) -> None:
        """A request reached the application."""
        self.in_flight += 1
        self._idle.clear()

    def request_finished(self) -> None:
        """A request's handler returned (or was cancelled)."""
        self.in_flight -= 1
        if self.in_flight <= 0:
            self.in_flight = 0
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight; ``False`` if ``timeout_s`` passed first."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


def readiness(pool: asyncpg.Pool, lifecycle: Lifecycle) -> dict[str, str]:
    """Whether this replica can usefully take traffic: ``{"process": ..., "database_pool": ...}``.

    Only what is this replica's own counts. PostgreSQL or Redis being away is every replica's
    state at once; they report it in-band (``gateway.ops.dependencies``), which a balancer that
    took them all out would replace with its own error page.
    """
    return {
        "process": "draining" if lifecycle.draining else "ok",
        "database_pool": "closing" if pool.is_closing() else "open",
    }
