"""What PostgreSQL and Redis look like from this process, apart from readiness.

A replica keeps serving while Redis is away (rate limits fail open, run events go straight to
PostgreSQL) and answers its own JSON 503 with ``Retry-After`` while PostgreSQL is; taking it out
of the load balancer for either would only replace those answers with the balancer's HTML 503
on every replica at once. So readiness (``gateway.ops.drain``) does not look at them: their
state is reported here, on ``/healthz/dependencies`` and as ``agent_gateway_dependency_up``,
for people and alerts, never for a probe.

A busy process is not an outage: PostgreSQL and Redis are each asked on a connection of the
monitor's own, never one of the request pools (which a burst of requests can hold entirely), and a
probe whose bound ran out while the event loop itself was late says nothing either way
(:func:`_bounded`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from enum import StrEnum
from typing import Any

import asyncpg
import structlog

from store.pool import connect
from store.redis_client import connect_redis

log = structlog.get_logger(__name__)

# One answer is awaited this long; a dependency slower than that is as good as down to a request.
PROBE_TIMEOUT_S = 1.0
# A probe that saw its bound this much after it was due was held up by this process's event loop
# (saturated by a burst, or blocked), not by the dependency: it is inconclusive (_bounded). A
# free loop sees a timer within a few milliseconds.
LOOP_LATE_S = 0.1
# How the probe's connection shows in pg_stat_activity.
_APPLICATION_NAME = "agent-gateway-dependency-probe"


class Dependency(StrEnum):
    """The services a replica calls on every request path."""

    POSTGRES = "postgres"
    REDIS = "redis"


UP = "ok"


class _Inconclusive(Exception):
    """A probe ran out of time while the event loop was ``late_s`` seconds late."""

    def __init__(self, late_s: float) -> None:
        super().__init__(f"the event loop was {late_s:.3f} s late")
        self.late_s = late_s


class DependencyMonitor:
    """Probes each dependency on demand (or every few seconds: :meth:`run`); remembers the last
    answer.

    ``on_probe`` is told every probe's outcome (the metrics gauge); a change of state is logged
    once, so an outage shows as one line when it starts and one when it ends. PostgreSQL is
    asked on one connection of the monitor's own, opened at the first probe, reused, replaced
    after any failure, and closed by :meth:`close`. Redis (``redis_url``, a node of a cluster
    when ``redis_cluster``) is asked through a client of the monitor's own, which connects at
    the first probe and again after a failure; :meth:`close` closes it.
    """

    def __init__(
        self,
        database_url: str,
        redis_url: str,
        *,
        redis_cluster: bool = False,
        on_probe: Callable[[Dependency, bool], None] = lambda _dependency, _up: None,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        self._database_url = database_url
        # Not the process's client: a burst can take every connection of its pool (a waiting
        # pool makes a command wait for one, a cluster's refuses it), and a ping behind them
        # would report Redis down while it serves the burst. One probe runs at a time (below),
        # so this client holds one connection (one per node of a cluster).
        self._redis = connect_redis(
            redis_url, cluster=redis_cluster, socket_connect_timeout=probe_timeout_s
        )
        self._on_probe = on_probe
        self._timeout_s = probe_timeout_s
        self._connection: asyncpg.Connection | None = None
        # One probe at a time: the background loop and a /healthz/dependencies call (or two
        # scrapes) share the connection, which runs one statement at a time.
        self._probing = asyncio.Lock()
        self.state: dict[Dependency, str] = {}

    async def probe(self) -> dict[Dependency, str]:
        """Ask every dependency at once: ``ok``, or ``unavailable: <error type>``; a dependency
        whose probe was inconclusive keeps its last state."""
        async with self._probing:
            return await self._probe()

    async def _probe(self) -> dict[Dependency, str]:
        async def redis() -> None:
            await self._redis.ping()

        checks = {Dependency.POSTGRES: self._postgres, Dependency.REDIS: redis}
        results = await asyncio.gather(
            *(_bounded(check(), self._timeout_s) for check in checks.values()),
            return_exceptions=True,
        )
        state: dict[Dependency, str] = {}
        for dependency, result in zip(checks, results, strict=True):
            if isinstance(result, _Inconclusive):
                # Unknown counts as up, as below.
                state[dependency] = self.state.get(dependency, UP)
                log.info(
                    "dependency_probe_inconclusive",
                    dependency=dependency.value,
                    loop_late_s=round(result.late_s, 3),
                )
            else:
                state[dependency] = (
                    UP if result is None else f"unavailable: {type(result).__name__}"
                )
            up = state[dependency] == UP
            self._on_probe(dependency, up)
            # Unknown counts as up: a replica that starts healthy logs nothing.
            was_up = self.state.get(dependency, UP) == UP
            if up != was_up:
                if up:
                    log.info("dependency_up", dependency=dependency.value)
                else:
                    log.warning(
                        "dependency_down", dependency=dependency.value, state=state[dependency]
                    )
        self.state = state
        return state

    async def _postgres(self) -> None:
        """``SELECT 1`` on the monitor's own connection: a request pool whose every connection
        is taken is busy, not down, and a probe queued behind the requests would say it is."""
        connection = self._connection
        if connection is None or connection.is_closed():
            # Never opened, or closed under it (PostgreSQL restarted since the last probe).
            self._connection = None
            connection = self._connection = await connect(
                self._database_url,
                connect_timeout_s=self._timeout_s,
                application_name=_APPLICATION_NAME,
            )
        try:
            await connection.fetchval("SELECT 1")
        except BaseException:
            # Cut, timed out or cancelled mid-statement: the next probe opens a new connection.
            self._connection = None
            connection.terminate()
            raise

    async def run(self, interval_s: float) -> None:
        """Probe every ``interval_s`` until cancelled."""
        while True:
            await self.probe()
            await asyncio.sleep(interval_s)

    async def close(self) -> None:
        """Close the probe's connections (a later probe would open others)."""
        async with self._probing:
            connection, self._connection = self._connection, None
            if connection is not None:
                # At shutdown, whatever state PostgreSQL is in: close() aborts the connection
                # when it cannot end it politely, then raises.
                with contextlib.suppress(Exception):
                    await connection.close(timeout=self._timeout_s)
            # Its connections close whether Redis answers or not.
            with contextlib.suppress(Exception):
                await self._redis.aclose()


async def _bounded(check: Coroutine[Any, Any, None], timeout_s: float) -> None:
    """Await ``check`` for ``timeout_s`` at most; :class:`_Inconclusive` when the bound ran out
    while the event loop was late.

    The bound is a timer of this process's event loop, and so is the reading of the answer. A
    loop saturated by a burst of requests, or blocked by a synchronous call, runs both late: the
    answer may well have arrived in time and be waiting unread, so the timeout says nothing about
    the dependency, and reporting it as down would page people for a busy process. How late this
    task woke past its deadline is how long the loop kept it waiting; past ``LOOP_LATE_S`` the
    probe is inconclusive and the last known state stands. (A saturated loop is caught too: its
    turns are long, and a task whose timer falls due in one turn wakes two turns on, a whole
    turn late at least. A probe needs a few turns, so a loop slow enough to make it miss a 1 s
    bound is one whose turns take well over ``LOOP_LATE_S``.) A dependency that does not answer
    while the loop is free still times out on time and is reported down, and a refused or cut
    connection is an error, never a timeout, whatever the loop's state.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        async with asyncio.timeout_at(deadline):
            await check
    except TimeoutError:
        late_s = loop.time() - deadline
        if late_s > LOOP_LATE_S:
            raise _Inconclusive(late_s) from None
        raise
