"""PostgreSQL and Redis as a process's dependency monitor sees them: a busy process is not an
outage, a dependency that does not answer in time is.

(A pool whose every connection requests hold: tests/http/test_health.py. PostgreSQL stopped
and Redis away, then back: tests/resilience/test_postgres_outage.py, test_redis_outage.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.ops.dependencies import LOOP_LATE_S, UP, Dependency, DependencyMonitor
from store.redis_client import RedisClient
from tests.support.backends import Backends
from tests.support.dependencies import changes, inconclusive
from tests.support.event_loop import block_the_loop_once_under_way

MonitorFactory = Callable[..., DependencyMonitor]
# Short, to keep the tests quick: the rule does not depend on the bound.
PROBE_TIMEOUT_S = 0.2
BOTH_UP = {Dependency.POSTGRES: UP, Dependency.REDIS: UP}


@pytest.fixture
async def make_monitor(
    backends: Backends, redis_client: RedisClient
) -> AsyncIterator[MonitorFactory]:
    """Monitors of the session's PostgreSQL and Redis; their connections closed at the end."""
    monitors: list[DependencyMonitor] = []

    def make(**options: Any) -> DependencyMonitor:
        monitor = DependencyMonitor(
            backends.database_url,
            backends.redis_url,
            redis_cluster=backends.redis_cluster,
            **options,
        )
        monitors.append(monitor)
        return monitor

    yield make
    for monitor in monitors:
        await monitor.close()


async def test_a_probe_held_up_by_a_blocked_event_loop_changes_nothing(
    make_monitor: MonitorFactory,
) -> None:
    """A burst keeps the replica's event loop busy for seconds: the probe's answers arrive in
    time but wait unread past its bound. That says nothing about PostgreSQL or Redis: each keeps
    its state, and no outage is logged."""
    reported: list[tuple[Dependency, bool]] = []
    monitor = make_monitor(
        probe_timeout_s=PROBE_TIMEOUT_S,
        on_probe=lambda dependency, up: reported.append((dependency, up)),
    )
    assert await monitor.probe() == BOTH_UP

    with capture_logs() as logs:
        probing = asyncio.create_task(monitor.probe())
        block_the_loop_once_under_way(PROBE_TIMEOUT_S + 3 * LOOP_LATE_S)
        state = await probing

    assert state == BOTH_UP
    assert monitor.state == BOTH_UP
    assert changes(logs) == []
    # The bound did run out, late: the probe was in flight while the loop was blocked.
    assert sorted(inconclusive(logs)) == ["postgres", "redis"]
    assert all(up for _dependency, up in reported)


async def test_an_outage_stays_reported_while_a_probe_is_held_up_by_the_loop(
    make_monitor: MonitorFactory,
) -> None:
    """Inconclusive keeps the last state whatever it was: an outage already reported is not
    called over by a probe that could not tell."""
    monitor = make_monitor(probe_timeout_s=PROBE_TIMEOUT_S)
    # As a monitor that saw both away a moment ago.
    monitor.state = {
        Dependency.POSTGRES: "unavailable: ConnectionRefusedError",
        Dependency.REDIS: "unavailable: ConnectionError",
    }
    before = dict(monitor.state)

    with capture_logs() as logs:
        probing = asyncio.create_task(monitor.probe())
        block_the_loop_once_under_way(PROBE_TIMEOUT_S + 3 * LOOP_LATE_S)
        state = await probing

    assert state == before
    assert changes(logs) == []
    assert sorted(inconclusive(logs)) == ["postgres", "redis"]


async def test_a_dependency_that_does_not_answer_within_the_bound_is_down_on_a_free_loop(
    make_monitor: MonitorFactory,
) -> None:
    """The loop is free and the bound runs out on time: that is the dependency's slowness, as
    good as an outage to a request. Reported, and logged once."""
    # Shorter than any answer can be.
    monitor = make_monitor(probe_timeout_s=1e-6)

    with capture_logs() as logs:
        first = await monitor.probe()
        second = await monitor.probe()

    down = {
        Dependency.POSTGRES: "unavailable: TimeoutError",
        Dependency.REDIS: "unavailable: TimeoutError",
    }
    assert first == down
    assert second == down
    assert sorted(changes(logs)) == [
        ("dependency_down", "postgres"),
        ("dependency_down", "redis"),
    ]
    assert inconclusive(logs) == []
