"""The Trigger.dev realtime feed: the runs the adapter tagged, followed over Electric's shape
protocol against the fake Trigger.dev (a real HTTP server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from adapters.base import FeedBatch, RuntimeRefused, RuntimeRetryLater, TriggerPayload
from adapters.trigger_dev import TriggerDevAdapter
from devkit.fakes.trigger_dev import (
    FEED,
    REALTIME_REQUESTS,
    RUNS,
    advance_run,
    break_realtime,
    create_fake_trigger_dev,
    force_must_refetch,
)

SECRET = "tr_dev_feed"
TAG = "agent-gateway"


@pytest.fixture
async def fake() -> AsyncIterator[TestServer]:
    # Runs move only when the test says so; a live request is held half a second at most.
    server = TestServer(create_fake_trigger_dev(SECRET, advance="manual", live_timeout_s=0.5))
    async with server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def make_adapter(session: aiohttp.ClientSession, tag: str | None = TAG) -> TriggerDevAdapter:
    return TriggerDevAdapter(session, run_tag=tag, feed_timeout_s=10)


def runtime_of(server: TestServer, secret: str = SECRET) -> dict[str, str]:
    return {"api_url": str(server.make_url("/")), "task_id": "make-report", "secret_key": secret}


async def trigger(adapter: TriggerDevAdapter, server: TestServer, run_id: int, **task: Any) -> str:
    payload = TriggerPayload(
        run_id=run_id,
        agent_id=3,
        input=task,
        agent_api_key="agk_x",
        callback_url="https://gw.example/cb",
        idempotency_key=f"gw-feed-{run_id}",
    )
    invocation = await adapter.invoke(runtime_of(server), payload, wait_s=5)
    assert invocation.runtime_run_id is not None
    return invocation.runtime_run_id


def statuses(batch: FeedBatch) -> dict[str, str]:
    return {change.runtime_run_id: change.result.status for change in batch.changes}


def requests_of(server: TestServer) -> list[dict[str, Any]]:
    app = server.app
    assert app is not None
    return app[REALTIME_REQUESTS]


async def test_the_adapter_tags_the_runs_it_triggers(
    fake: TestServer, session: aiohttp.ClientSession
) -> None:
    run = await trigger(make_adapter(session), fake, 1)

    assert fake.app is not None
    assert fake.app[RUNS][run]["tags"] == [TAG]


async def test_the_first_answer_is_a_snapshot_of_the_tagged_runs_only(
    fake: TestServer, session: aiohttp.ClientSession
) -> None:
    adapter = make_adapter(session)
    first = await trigger(adapter, fake, 1, statuses=["QUEUED", "EXECUTING"])
    second = await trigger(adapter, fake, 2, statuses=["EXECUTING"])
    await trigger(make_adapter(session, tag="someone-else"), fake, 3)
    await trigger(make_adapter(session, tag=None), fake, 4)

    batches = adapter.feed(runtime_of(fake)).batches()
    snapshot = await anext(batches)

    assert snapshot.snapshot
    assert statuses(snapshot) == {first: "queued", second: "running"}
    [request] = requests_of(fake)
    assert request["query"]["offset"] == "-1"
    assert request["query"]["tags"] == TAG
    assert "live" not in request["query"]
    await batches.aclose()


async def test_live_changes_arrive_as_they_happen_with_the_output_and_the_error(
    fake: TestServer, session: aiohttp.ClientSession
) -> None:
    adapter = make_adapter(session)
    done = await trigger(
        adapter, fake, 1, statuses=["EXECUTING", "COMPLETED"], output={"summary": "ok"}
    )
    broken = await trigger(adapter, fake, 2, statuses=["EXECUTING", "CRASHED"], error="Out of RAM")
    batches = adapter.feed(runtime_of(fake)).batches()
    await anext(batches)
    assert fake.app is not None

    waiting = asyncio.ensure_future(anext(batches))
    await asyncio.sleep(0)
    advance_run(fake.app, done)
    update = await waiting
    advance_run(fake.app, broken)
    failure = await anext(batches)

    assert not update.snapshot
    [completed] = update.changes
    assert completed.runtime_run_id == done
    assert completed.result.status == "completed"
    assert completed.result.output == {"summary": "ok"}
    assert completed.result.has_output
    [failed] = failure.changes
    assert failed.result.status == "failed"
    assert failed.result.error is not None
    assert "Out of RAM" in failed.result.error
    await batches.aclose()


async def test_each_request_continues_from_the_offset_and_handle_of_the_last_answer(
    fake: TestServer, session: aiohttp.ClientSession
) -> None:
    adapter = make_adapter(session)
    run = await trigger(adapter, fake, 1, statuses=["QUEUED", "EXECUTING", "COMPLETED"])
    batches = adapter.feed(runtime_of(fake)).batches()
    await anext(batches)
    assert fake.app is not None

    for _ in range(2):
        advance_run(fake.app, run)
        await anext(batches)

    snapshot, first_live, second_live = requests_of(fake)
    assert "live" not in snapshot["query"]
    for request in (first_live, second_live):
        assert request["query"]["live"] == "true"
        assert request["query"]["handle"] == fake.app[FEED].handle
    # Each live request sends back the offset the previous answer gave: one change each.
    assert first_live["query"]["offset"] == "1_0"
    assert second_live["query"]["offset"] == "2_0"
    await batches.aclose()


async def test_a_live_request_is_held_until_the_timeout_then_answers_up_to_date(
    fake: TestServer, session: aiohttp.ClientSession
) -> None:
    adapter = make_adapter(session)
    await trigger(adapter, fake, 1, statuses=["EXECUTING"])
    batches = adapter.feed(runtime_of(fake)).batches()
    await anext(batches)

    quiet = await anext(batches)

    assert not quiet.snapshot
    assert quiet.changes == ()
    held = requests_of(fake)[-1]
    assert held["query"]["live"] == "true"
    assert held["status"] == 200
    await batches.aclose()


async def test_a_must_refetch_starts_again_from_a_new_snapshot(
    fake: TestServer, session: aiohttp.ClientSession
) -> None:
    adapter = make_adapter(session)
    run = await trigger(adapter, fake, 1, statuses=["EXECUTING", "COMPLETED"])
    batches = adapter.feed(runtime_of(fake)).batches()
    await anext(batches)
    assert fake.app is not None

    new_handle = force_must_refetch(fake.app)
    advance_run(fake.app, run)
    again = await anext(batches)

    assert again.snapshot
    assert statuses(again) == {run: "completed"}
    refused, restarted = requests_of(fake)[-2:]
    assert refused["status"] == 409
    assert restarted["query"]["offset"] == "-1"
    assert restarted["query"]["handle"] == new_handle
    await batches.aclose()


async def test_every_request_carries_the_key_and_the_versions_trigger_dev_expects(
    fake: TestServer, session: aiohttp.ClientSession
) -> None:
    adapter = make_adapter(session)
    await trigger(adapter, fake, 1)
    batches = adapter.feed(runtime_of(fake)).batches()
    await anext(batches)
    await anext(batches)

    for request in requests_of(fake):
        headers = CIMultiDict(request["headers"])
        assert headers["Authorization"] == f"Bearer {SECRET}"
        assert headers["x-trigger-electric-version"] == "1.0.0-beta.1"
        assert headers["x-trigger-api-version"] == "2025-07-16"
        # The payload (possibly large) is never fetched: the feed needs the state and output.
        assert "payload" in request["query"]["skipColumns"].split(",")
    await batches.aclose()


async def test_a_wrong_key_is_refused_for_good_and_a_broken_stream_is_retried_later(
    fake: TestServer, session: aiohttp.ClientSession
) -> None:
    adapter = make_adapter(session)
    with pytest.raises(RuntimeRefused, match="401"):
        await anext(adapter.feed(runtime_of(fake, secret="tr_dev_wrong")).batches())

    batches = adapter.feed(runtime_of(fake)).batches()
    await anext(batches)
    assert fake.app is not None
    waiting = asyncio.ensure_future(anext(batches))
    while not fake.app[FEED].held:  # the live request reaches the fake and is held
        await asyncio.sleep(0.01)
    break_realtime(fake.app)

    with pytest.raises(RuntimeRetryLater) as failure:
        await waiting
    assert SECRET not in str(failure.value)


def test_a_tag_trigger_dev_would_refuse_is_refused_at_once() -> None:
    session: Any = object()
    for tag in ("", "a,b", 'say "hi"', "x" * 129):
        with pytest.raises(ValueError, match=r"cannot be a Trigger\.dev run tag"):
            TriggerDevAdapter(session, run_tag=tag)
