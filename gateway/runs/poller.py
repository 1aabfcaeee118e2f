"""Following runs that a runtime runs on its own (Trigger.dev) until they end.

Nothing of it lives in process memory: a followed run carries its next poll time in its row
(``follow_at``). Every replica looks for due polls, claims them with ``SKIP LOCKED`` (pushing
``follow_at`` ahead by a lease), polls, and writes the next due time back. A replica that stops
releases what it holds; one that dies only delays its runs by the lease. So a run keeps being
followed after the request that started it, or the replica it started on, is gone.

Where the runtime has a real-time feed up on this replica (:mod:`gateway.runs.realtime`), its
runs are not polled: their ``follow_at`` moves a fallback interval ahead and the feed reports
their end. A run the feed does not carry after that interval (not tagged, say) is polled once
per interval. Both paths record through :func:`record_followed`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any, Protocol

import asyncpg
import structlog

from adapters.base import (
    RunResult,
    RuntimeAdapter,
    RuntimeFailure,
    RuntimeRefused,
    RuntimeRetryLater,
)
from gateway.runs.recording import RunTransitions
from store import follows
from store.enums import RunStatus

log = structlog.get_logger(__name__)

FIRST_POLL_S = 0.25
_MAX_POLL_INTERVAL_S = 10.0
_BACKOFF = 1.5


def poll_interval_s(attempts: int) -> float:
    """The pause before poll number ``attempts + 1``: quick at first, then backing off."""
    return float(min(FIRST_POLL_S * _BACKOFF ** max(0, attempts - 1), _MAX_POLL_INTERVAL_S))


class RealtimeCoverage(Protocol):
    """What the poller asks of the real-time follower."""

    def covers(self, runtime: Mapping[str, Any]) -> bool:
        """Whether a feed is up on this replica for ``runtime``'s environment."""
        ...

    def carries(self, runtime_run_id: str) -> bool:
        """Whether that feed carries the run (and so reports its changes)."""
        ...

    def seen_end(self, runtime_run_id: str) -> RunResult | None:
        """The end a feed reported for a run before the run was known to be followed."""
        ...


async def record_followed(
    pool: asyncpg.Pool, transitions: RunTransitions, item: follows.FollowedRun, result: RunResult
) -> bool:
    """Record what the runtime says of a followed run: its end (then it is no longer followed)
    or its move to running or waiting. ``True`` when the run has ended.

    The poller and the real-time feeds of every replica may report the same end: the end claim
    in :meth:`RunTransitions.record_result` lets exactly one of them record it.
    """
    if result.terminal:
        await transitions.record_result(item.run_id, result)
        await follows.stop_following(pool, item.run_id)
        return True
    if result.status != item.status and result.status in {RunStatus.RUNNING, RunStatus.WAITING}:
        await transitions.record_result(item.run_id, result)
    return False


class RunPoller:
    """Polls due followed runs and records what their runtime says."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        transitions: RunTransitions,
        adapters: Mapping[str, RuntimeAdapter],
        *,
        tick_s: float,
        lease_s: float,
        batch: int = 50,
        realtime: RealtimeCoverage | None = None,
        fallback_s: float = 30.0,
    ) -> None:
        self._pool = pool
        self._transitions = transitions
        self._adapters = adapters
        self._tick_s = tick_s
        self._lease_s = lease_s
        self._batch = batch
        self._realtime = realtime
        self._fallback_s = fallback_s
        self._held: set[int] = set()
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Poll until :meth:`stop`; a database outage is waited out."""
        while not self._stopping.is_set():
            try:
                claimed = await follows.claim_runs_to_follow(
                    self._pool, lease_s=self._lease_s, limit=self._batch
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("follower_backoff", error=str(exc))
                claimed = []
            if claimed:
                self._held.update(item.run_id for item in claimed)
                await asyncio.gather(*(self._follow(item) for item in claimed))
            if len(claimed) < self._batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=self._tick_s)

    def stop(self) -> None:
        """Finish the polls in hand, then return from :meth:`run`."""
        self._stopping.set()

    async def release(self) -> None:
        """Hand the runs this replica holds back, due at once, for another replica to take."""
        if self._held:
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await follows.release_follows(self._pool, list(self._held))
            self._held.clear()

    async def _follow(self, item: follows.FollowedRun) -> None:
        try:
            await self._poll_once(item)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # The lease runs out and the poll happens again; nothing is lost.
            log.warning("follow_poll_not_recorded", run_id=item.run_id, error=str(exc))
        finally:
            self._held.discard(item.run_id)

    async def _poll_once(self, item: follows.FollowedRun) -> None:
        adapter = self._adapters.get(str(item.runtime.get("kind")))
        if adapter is None:
            await self._transitions.fail(
                item.run_id, "The agent's runtime can no longer be followed"
            )
            await follows.stop_following(self._pool, item.run_id)
            return
        if self._realtime is not None and self._realtime.covers(item.runtime):
            seen = self._realtime.seen_end(item.runtime_run_id)
            if seen is not None:
                # The feed saw the end before the run's id was stored: no poll needed.
                await record_followed(self._pool, self._transitions, item, seen)
                return
            if item.attempts <= 1 or self._realtime.carries(item.runtime_run_id):
                # The feed reports this run's changes; a run it does not carry (not tagged,
                # say) is polled once per fallback interval.
                await follows.schedule_follow(self._pool, item.run_id, in_s=self._fallback_s)
                return
        try:
            result = await adapter.poll(item.runtime, item.runtime_run_id)
        except RuntimeRetryLater as exc:
            delay = exc.delay_s if exc.delay_s is not None else poll_interval_s(item.attempts)
            log.info("follow_retry_later", run_id=item.run_id, reason=str(exc), delay_s=delay)
            await follows.schedule_follow(self._pool, item.run_id, in_s=max(delay, FIRST_POLL_S))
            return
        except RuntimeRefused as exc:
            await self._transitions.fail(item.run_id, f"RuntimeRefused: {exc}")
            await follows.stop_following(self._pool, item.run_id)
            return
        except RuntimeFailure as exc:
            log.warning("follow_poll_failed", run_id=item.run_id, error=str(exc))
            await follows.schedule_follow(
                self._pool, item.run_id, in_s=poll_interval_s(item.attempts)
            )
            return
        if await record_followed(self._pool, self._transitions, item, result):
            return
        interval = poll_interval_s(item.attempts)
        if self._realtime is not None and self._realtime.covers(item.runtime):
            interval = self._fallback_s
        await follows.schedule_follow(self._pool, item.run_id, in_s=interval)
