"""Following runs through their runtime's real-time feed (Trigger.dev) instead of polling each.

Each replica opens one feed per runtime environment its agents use (found in the agents table
every ``discover_s``, and opened at once by :meth:`RealtimeFollower.ensure` when a run of an
environment without a feed is triggered), not one per run: the gateway tags the runs it
triggers and the feed carries every run with the tag. A change the feed reports is recorded
through the same :func:`~gateway.runs.poller.record_followed` as a poll; every replica's
feed sees the same end, and the end claim lets exactly one of them record it.

While a feed is up, the poller leaves that environment's runs to it (they are polled once per
fallback interval only). When the feed drops, those runs are made due at once and the poller
follows them as before; the feed reconnects with backoff from ``offset=-1``, whose snapshot
carries every tagged run, so the runs that ended or were triggered while it was down are
seen then.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from adapters.base import FeedBatch, FollowsInRealTime, RunResult, RuntimeAdapter, RuntimeFailure
from gateway.runs.poller import record_followed
from gateway.runs.recording import RunTransitions
from store import follows

log = structlog.get_logger(__name__)

_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
_FIRST_RETRY_S = 0.5
_MAX_RETRY_S = 30.0
# Ends the feed reported for runs not (yet) known to be followed: the trigger call's answer
# may still be on its way when a quick run ends. Bounded: the oldest are forgotten first.
_SEEN_ENDS = 1_000


@dataclass(slots=True)
class _Environment:
    """One runtime environment: the agents that use it and the task following its feed."""

    runtime: Mapping[str, Any]
    agent_ids: set[int] = field(default_factory=set)
    task: asyncio.Task[None] | None = None
    # The runs in flight the feed carries (it will report their changes): never polled.
    carried: set[str] = field(default_factory=set)
    # When (loop time) a trigger last asked for this feed: a discovery that read the agents
    # before then may not know the agent yet, and must not close it.
    ensured_at: float = float("-inf")


class RealtimeFollower:
    """One real-time feed per runtime environment on this replica, recorded as runs change."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        transitions: RunTransitions,
        adapter: FollowsInRealTime,
        pollers: Mapping[str, RuntimeAdapter],
        *,
        kind: str,
        discover_s: float,
    ) -> None:
        self._pool = pool
        self._transitions = transitions
        self._adapter = adapter
        self._pollers = pollers
        self._kind = kind
        self._discover_s = discover_s
        self._environments: dict[str, _Environment] = {}
        self._up: set[str] = set()
        self._seen_ends: OrderedDict[str, RunResult] = OrderedDict()
        self._stopping = asyncio.Event()

    def covers(self, runtime: Mapping[str, Any]) -> bool:
        """Whether this replica's feed for ``runtime``'s environment is up (answered a
        snapshot and has not failed since)."""
        return self._adapter.environment(runtime) in self._up

    def carries(self, runtime_run_id: str) -> bool:
        """Whether a feed that is up carries this run (it reports the run's changes, so the
        run needs no poll at all)."""
        return any(runtime_run_id in e.carried for e in self._environments.values())

    def seen_end(self, runtime_run_id: str) -> RunResult | None:
        """The end a feed reported for a run that was not yet known to be followed."""
        return self._seen_ends.get(runtime_run_id)

    def ensure(self, agent_id: int, runtime: Mapping[str, Any]) -> None:
        """Have the feed of ``runtime``'s environment open (a run of agent ``agent_id`` was just
        triggered there): a new agent's first run is then followed from its start, not from
        the next discovery. Nothing happens when the feed is already open or reconnecting."""
        if self._stopping.is_set():
            return
        key = self._adapter.environment(runtime)
        environment = self._environments.get(key)
        if environment is None:
            environment = self._environments[key] = _Environment(runtime)
        environment.agent_ids.add(agent_id)
        environment.ensured_at = asyncio.get_running_loop().time()
        if environment.task is None or environment.task.done():
            log.info("realtime_feed_ensured", environment=key, agent_id=agent_id)
            environment.task = asyncio.create_task(
                self._follow(key, environment), name=f"realtime-feed-{key}"
            )

    @property
    def feeds_up(self) -> int:
        """How many feeds are up on this replica."""
        return len(self._up)

    async def run(self) -> None:
        """Open and close feeds as agents come and go, until :meth:`stop`."""
        try:
            while not self._stopping.is_set():
                try:
                    await self._discover()
                except _DB_ERRORS as exc:
                    log.warning("realtime_discovery_failed", error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=self._discover_s)
        finally:
            await self._close_all()

    def stop(self) -> None:
        """Close every feed (their long-polls are cancelled) and return from :meth:`run`."""
        self._stopping.set()

    async def _discover(self) -> None:
        asked_at = asyncio.get_running_loop().time()
        agents = await follows.agents_of_runtime_kind(self._pool, self._kind)
        wanted: dict[str, _Environment] = {}
        for agent_id, runtime in agents:
            key = self._adapter.environment(runtime)
            wanted.setdefault(key, _Environment(runtime)).agent_ids.add(agent_id)
        for key in self._environments.keys() - wanted.keys():
            if self._environments[key].ensured_at >= asked_at:
                continue  # asked for by a trigger since the agents were read
            environment = self._environments.pop(key)
            if environment.task is not None:
                environment.task.cancel()
        for key, found in wanted.items():
            environment = self._environments.setdefault(key, found)
            if environment.ensured_at >= asked_at:
                environment.agent_ids |= found.agent_ids
            else:
                environment.agent_ids = found.agent_ids
            if environment.task is None or environment.task.done():
                environment.task = asyncio.create_task(
                    self._follow(key, environment), name=f"realtime-feed-{key}"
                )

    async def _close_all(self) -> None:
        tasks = [e.task for e in self._environments.values() if e.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._environments.clear()
        self._up.clear()

    async def _follow(self, key: str, environment: _Environment) -> None:
        """Keep the environment's feed open, reconnecting with backoff; mark it down (and hand
        its runs to the poller) whenever it fails."""
        delay = _FIRST_RETRY_S
        while True:
            try:
                async for batch in self._adapter.feed(environment.runtime).batches():
                    if key not in self._up:
                        self._up.add(key)
                        log.info("realtime_feed_up", environment=key)
                    delay = _FIRST_RETRY_S
                    await self._apply(batch, environment)
            except RuntimeFailure as exc:
                log.warning("realtime_feed_down", environment=key, error=str(exc))
            except _DB_ERRORS as exc:
                log.warning("realtime_feed_not_recorded", environment=key, error=str(exc))
            except Exception:
                log.exception("realtime_feed_failed", environment=key)
            finally:
                environment.carried.clear()
                if key in self._up:
                    self._up.discard(key)
                    if not self._stopping.is_set():
                        # The poller takes over now; a stopping replica leaves its runs to
                        # the other replicas' feeds (or to the fallback interval).
                        with contextlib.suppress(*_DB_ERRORS):
                            await follows.follow_agents_now(
                                self._pool, sorted(environment.agent_ids)
                            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY_S)

    async def _apply(self, batch: FeedBatch, environment: _Environment) -> None:
        """Record what a feed answer says of the runs this gateway follows."""
        if batch.snapshot:
            environment.carried.clear()
        for change in batch.changes:
            if change.result.terminal:
                environment.carried.discard(change.runtime_run_id)
            else:
                environment.carried.add(change.runtime_run_id)
        if not batch.changes:
            return
        by_id = {change.runtime_run_id: change for change in batch.changes}
        followed = await follows.followed_by_runtime_ids(self._pool, list(by_id))
        known = {item.runtime_run_id for item in followed}
        if not batch.snapshot:
            # A snapshot names every tagged run of the last day, most of them long recorded;
            # a live change is the one that can overtake the trigger's answer.
            for change in batch.changes:
                if change.result.terminal and change.runtime_run_id not in known:
                    self._remember_end(change.runtime_run_id, change.result)
        for item in followed:
            change = by_id[item.runtime_run_id]
            result = change.result
            if not change.complete:
                adapter = self._pollers.get(str(item.runtime.get("kind")))
                if adapter is None:
                    continue
                try:
                    # The output lives behind a URL the run's retrieve gives.
                    result = await adapter.poll(item.runtime, item.runtime_run_id)
                except RuntimeFailure as exc:
                    log.info("realtime_output_not_read", run_id=item.run_id, reason=str(exc))
                    continue  # the poller reads it at its next interval
            await record_followed(self._pool, self._transitions, item, result)

    def _remember_end(self, runtime_run_id: str, result: RunResult) -> None:
        self._seen_ends[runtime_run_id] = result
        self._seen_ends.move_to_end(runtime_run_id)
        while len(self._seen_ends) > _SEEN_ENDS:
            self._seen_ends.popitem(last=False)
