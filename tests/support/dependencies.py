"""What a dependency monitor (``gateway.ops.dependencies``) said, read from its log lines."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from structlog.testing import capture_logs

from gateway.ops.dependencies import UP, Dependency, DependencyMonitor


def changes(logs: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Its ``dependency_down`` / ``dependency_up`` lines as ``(event, dependency)``, in order."""
    return [
        (line["event"], line["dependency"])
        for line in logs
        if line["event"] in {"dependency_down", "dependency_up"}
    ]


def inconclusive(logs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The dependencies whose probe it found inconclusive (the event loop was late), in order."""
    return [line["dependency"] for line in logs if line["event"] == "dependency_probe_inconclusive"]


@dataclass
class Outage:
    """What a monitor said before a dependency stopped, on three probes while it was away, on
    the first probe after it was back, and its change lines over all of it."""

    before: dict[Dependency, str]
    during: list[dict[Dependency, str]]
    after: dict[Dependency, str]
    changes: list[tuple[str, str]]


async def probed_through_an_outage(
    monitor: DependencyMonitor, stop: Callable[[], None], start: Callable[[], None]
) -> Outage:
    """Probe, ``stop`` the dependency, probe three times, ``start`` it, probe again."""
    with capture_logs() as logs:
        before = await monitor.probe()
        await asyncio.to_thread(stop)
        during = [await monitor.probe() for _ in range(3)]
        await asyncio.to_thread(start)
        after = await monitor.probe()
    return Outage(before, during, after, changes(logs))


def assert_one_outage_of(seen: Outage, dependency: Dependency) -> None:
    """``dependency`` was up, then down on every probe while away and up again, the others up
    all along; one ``dependency_down`` line and one ``dependency_up`` line, nothing else."""
    others = [other for other in Dependency if other is not dependency]
    assert seen.before[dependency] == UP
    assert all(state[dependency].startswith("unavailable: ") for state in seen.during)
    assert all(state[other] == UP for state in seen.during for other in others)
    assert seen.after[dependency] == UP
    name = dependency.value
    assert seen.changes == [("dependency_down", name), ("dependency_up", name)]
