"""The closed sets' one status/event table, read both ways."""

from __future__ import annotations

import pytest

from store.enums import EventType, RunStatus, event_to, status_after


@pytest.mark.parametrize("status", [s for s in RunStatus if s != RunStatus.QUEUED])
def test_the_event_to_a_status_moves_a_run_to_that_status(status: RunStatus) -> None:
    event = event_to(status)
    assert event is not None
    assert status_after(event) == status


def test_started_and_output_both_mean_running_and_nothing_moves_a_run_back_to_queued() -> None:
    assert status_after(EventType.STARTED) == status_after(EventType.OUTPUT) == RunStatus.RUNNING
    assert event_to(RunStatus.RUNNING) == EventType.STARTED
    assert event_to(RunStatus.RUNNING, with_output=True) == EventType.OUTPUT
    assert event_to(RunStatus.QUEUED) is None
