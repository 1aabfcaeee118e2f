"""Trigger.dev runs followed through the realtime feed: one subscription per environment per
replica, the poller stepping back while it is up and taking over while it is down.

Against the fake Trigger.dev (a real HTTP server) whose runs move only when the test says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.typedefs import Handler

from devkit.fakes.trigger_dev import (
    POLLS,
    REALTIME_REQUESTS,
    RUNS,
    advance_run,
    break_realtime,
    create_fake_trigger_dev,
    restore_realtime,
)
from gateway.http.app_keys import REALTIME_FOLLOWER
from store.consumer import StoreConsumer
from tests.runs.test_trigger_dev_runs import task_runtime, tenant_on, trigger_and_wait
from tests.support.gateways import GatewayFactory
from tests.support.polling import eventually
from tests.support.runs import wait_for_run
from tests.support.tenants import Tenant

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def trigger_dev() -> AsyncIterator[TestServer]:
    """The fake Trigger.dev; its runs move on :func:`advance_run` only, so a poll changes
    nothing and the test decides when a run ends."""
    server = TestServer(create_fake_trigger_dev(advance="manual", live_timeout_s=1.0))
    await server.start_server()
    yield server
    await server.close()


async def realtime_gateway(make_gateway: GatewayFactory) -> Client:
    """A replica following Trigger.dev in real time, finding new environments at once."""
    return await make_gateway(trigger_dev_realtime=True, trigger_dev_discover_s=0.05)


class Followed(NamedTuple):
    """A replica following Trigger.dev in real time, a tenant on it, and an agent whose
    environment's feed is up."""

    client: Client
    tenant: Tenant
    runtime: dict[str, Any]
    agent: dict[str, Any]


async def followed_agent(make_gateway: GatewayFactory, server: TestServer) -> Followed:
    """A real-time replica, a tenant, a Trigger.dev agent on ``server``, its feed up."""
    client = await realtime_gateway(make_gateway)
    tenant = await tenant_on(client)
    runtime = task_runtime(server)
    agent = await tenant.create_agent(output_kind="json", runtime=runtime)
    await feed_up(client, runtime)
    return Followed(client, tenant, runtime, agent)


def app_of(client: Client) -> web.Application:
    return client.server.app


async def feed_up(client: Client, runtime: dict[str, Any]) -> None:
    """Wait until the replica's feed for ``runtime``'s environment has answered its snapshot."""
    follower = app_of(client)[REALTIME_FOLLOWER]
    await eventually(lambda: follower.covers(runtime))


async def feed_down(client: Client, runtime: dict[str, Any]) -> None:
    follower = app_of(client)[REALTIME_FOLLOWER]
    await eventually(lambda: not follower.covers(runtime))


def fake(server: TestServer) -> web.Application:
    app = server.app
    assert app is not None
    return app


async def task_run_of(db: asyncpg.Pool, run_id: int) -> str:
    """The Trigger.dev run id once the gateway has stored it (the run is followed)."""

    async def stored() -> str | None:
        value: str | None = await db.fetchval(
            "SELECT runtime_run_id FROM runs WHERE id = $1", run_id
        )
        return value

    value: str = await eventually(stored)
    return value


async def newest_run(db: asyncpg.Pool, agent_id: int) -> int:
    async def found() -> int | None:
        value: int | None = await db.fetchval(
            "SELECT id FROM runs WHERE agent_id = $1 AND runtime_run_id IS NOT NULL "
            "ORDER BY id DESC LIMIT 1",
            agent_id,
        )
        return value

    value: int = await eventually(found)
    return value


async def ends_recorded(db: asyncpg.Pool, run_id: int) -> int:
    """How many terminal events were applied to the run (its end recorded)."""
    count: int = await db.fetchval(
        """SELECT count(*) FROM applied_events
           WHERE run_id = $1 AND type IN ('completed', 'failed', 'cancelled')""",
        run_id,
    )
    return count


def polls_of(server: TestServer, task_run: str) -> int:
    return sum(1 for poll in fake(server)[POLLS] if poll["id"] == task_run)


async def start_run(tenant: Tenant, agent: dict[str, Any], task: dict[str, Any]) -> int:
    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger", headers=tenant.auth, json={"input": task}
    )
    assert resp.status == 202, await resp.text()
    run_id: int = (await resp.json())["runId"]
    return run_id


async def test_a_trigger_and_wait_is_answered_from_the_feed_without_a_single_poll(
    make_gateway: GatewayFactory,
    trigger_dev: TestServer,
    consumer: StoreConsumer,
    db: asyncpg.Pool,
) -> None:
    _, tenant, _, agent = await followed_agent(make_gateway, trigger_dev)
    task = {"statuses": ["QUEUED", "EXECUTING", "COMPLETED"], "output": {"summary": "live"}}

    waiting = asyncio.create_task(trigger_and_wait(tenant, agent, task, timeout_ms=20_000))
    run_id = await newest_run(db, agent["id"])
    task_run = await task_run_of(db, run_id)
    advance_run(fake(trigger_dev), task_run)
    # The feed reports the run executing: the gateway shows it running.
    await eventually(
        lambda: db.fetchval("SELECT status = 'running' FROM runs WHERE id = $1", run_id)
    )
    advance_run(fake(trigger_dev), task_run)
    status, run = await asyncio.wait_for(waiting, 10)

    assert status == 200, run
    assert run["status"] == "completed"
    assert run["output_data"] == {"summary": "live"}
    assert polls_of(trigger_dev, task_run) == 0
    assert fake(trigger_dev)[RUNS][task_run]["tags"] == ["agent-gateway"]
    # One subscription for the environment, by tag, not one per run.
    paths = {request["path"] for request in fake(trigger_dev)[REALTIME_REQUESTS]}
    assert paths == {"/realtime/v1/runs"}
    assert await ends_recorded(db, run_id) == 1


async def test_a_failed_task_reported_by_the_feed_is_a_failed_run(
    make_gateway: GatewayFactory,
    trigger_dev: TestServer,
    consumer: StoreConsumer,
    db: asyncpg.Pool,
) -> None:
    _, tenant, _, agent = await followed_agent(make_gateway, trigger_dev)

    run_id = await start_run(
        tenant, agent, {"statuses": ["EXECUTING", "SYSTEM_FAILURE"], "error": "Worker lost"}
    )
    task_run = await task_run_of(db, run_id)
    advance_run(fake(trigger_dev), task_run)
    run = await wait_for_run(tenant, agent["id"], run_id)

    assert run["status"] == "failed"
    assert "Worker lost" in run["error"]
    assert polls_of(trigger_dev, task_run) == 0


async def test_a_broken_stream_hands_the_runs_to_the_poller_and_none_is_missed(
    make_gateway: GatewayFactory,
    trigger_dev: TestServer,
    consumer: StoreConsumer,
    db: asyncpg.Pool,
) -> None:
    client, tenant, runtime, agent = await followed_agent(make_gateway, trigger_dev)
    before = await start_run(tenant, agent, {"statuses": ["EXECUTING", "COMPLETED"]})
    task_before = await task_run_of(db, before)

    # The stream breaks mid-run: the poller follows the run from now on.
    break_realtime(fake(trigger_dev))
    await feed_down(client, runtime)
    await eventually(lambda: polls_of(trigger_dev, task_before) > 0)
    # A run triggered while no stream is open.
    during = await start_run(tenant, agent, {"statuses": ["EXECUTING", "COMPLETED"]})
    task_during = await task_run_of(db, during)
    advance_run(fake(trigger_dev), task_before)
    first = await wait_for_run(tenant, agent["id"], before)
    # The stream comes back; the second run ends after that.
    restore_realtime(fake(trigger_dev))
    await feed_up(client, runtime)
    advance_run(fake(trigger_dev), task_during)
    second = await wait_for_run(tenant, agent["id"], during)

    assert first["status"] == second["status"] == "completed"
    assert await ends_recorded(db, before) == 1
    assert await ends_recorded(db, during) == 1


async def test_runs_that_ended_while_the_stream_was_down_are_found_in_the_next_snapshot(
    make_gateway: GatewayFactory,
    trigger_dev: TestServer,
    consumer: StoreConsumer,
    db: asyncpg.Pool,
) -> None:
    # This replica's poller looks for due polls once an hour: only the feed can end the runs.
    client = await make_gateway(
        trigger_dev_realtime=True, trigger_dev_discover_s=0.05, follow_tick_s=3600.0
    )
    tenant = await tenant_on(client)
    runtime = task_runtime(trigger_dev)
    agent = await tenant.create_agent(output_kind="json", runtime=runtime)
    await feed_up(client, runtime)
    before = await start_run(tenant, agent, {"statuses": ["EXECUTING", "COMPLETED"]})
    task_before = await task_run_of(db, before)

    break_realtime(fake(trigger_dev))
    await feed_down(client, runtime)
    # While no stream is open, a run is triggered, and both runs end.
    during = await start_run(tenant, agent, {"statuses": ["EXECUTING", "COMPLETED"]})
    task_during = await task_run_of(db, during)
    advance_run(fake(trigger_dev), task_before)
    advance_run(fake(trigger_dev), task_during)
    restore_realtime(fake(trigger_dev))
    first = await wait_for_run(tenant, agent["id"], before)
    second = await wait_for_run(tenant, agent["id"], during)

    assert first["status"] == second["status"] == "completed"
    assert polls_of(trigger_dev, task_before) == polls_of(trigger_dev, task_during) == 0
    assert await ends_recorded(db, before) == 1
    assert await ends_recorded(db, during) == 1


async def test_two_replicas_both_see_the_end_and_it_is_recorded_once(
    make_gateway: GatewayFactory,
    trigger_dev: TestServer,
    consumer: StoreConsumer,
    db: asyncpg.Pool,
) -> None:
    a = await realtime_gateway(make_gateway)
    b = await realtime_gateway(make_gateway)
    tenant = await tenant_on(a)
    runtime = task_runtime(trigger_dev)
    agent = await tenant.create_agent(output_kind="json", runtime=runtime)
    await feed_up(a, runtime)
    await feed_up(b, runtime)
    task = {"statuses": ["EXECUTING", "COMPLETED"], "output": {"summary": "once"}}

    waiting = asyncio.create_task(trigger_and_wait(tenant, agent, task, timeout_ms=20_000))
    run_id = await newest_run(db, agent["id"])
    task_run = await task_run_of(db, run_id)
    advance_run(fake(trigger_dev), task_run)
    status, run = await asyncio.wait_for(waiting, 10)

    assert status == 200, run
    assert run["output_data"] == {"summary": "once"}
    assert await ends_recorded(db, run_id) == 1
    assert polls_of(trigger_dev, task_run) == 0
    # Each replica held its own subscription.
    snapshots = [r for r in fake(trigger_dev)[REALTIME_REQUESTS] if r["query"]["offset"] == "-1"]
    assert len(snapshots) >= 2
    for replica in (a, b):
        metrics = await (await replica.get("/metrics")).text()
        assert "\nagent_gateway_trigger_dev_feeds_up 1.0\n" in metrics


@pytest.fixture
async def slow_trigger_dev() -> AsyncIterator[TestServer]:
    """The fake Trigger.dev, whose tasks end 10 ms after they start but whose trigger answer
    takes half a second: the feed reports the end before the gateway knows the run's id."""
    app = create_fake_trigger_dev(advance="time", step_s=0.01, live_timeout_s=1.0)

    @web.middleware
    async def slow_answer(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if request.path.endswith("/trigger"):
            await asyncio.sleep(0.5)
        return response

    app.middlewares.append(slow_answer)
    server = TestServer(app)
    await server.start_server()
    yield server
    await server.close()


async def test_an_end_the_feed_reports_before_the_trigger_answer_arrives_is_not_lost(
    make_gateway: GatewayFactory,
    slow_trigger_dev: TestServer,
    consumer: StoreConsumer,
    db: asyncpg.Pool,
) -> None:
    _, tenant, _, agent = await followed_agent(make_gateway, slow_trigger_dev)
    task = {"statuses": ["EXECUTING", "COMPLETED"], "output": {"summary": "quick"}}

    status, run = await trigger_and_wait(tenant, agent, task, timeout_ms=20_000)

    assert status == 200, run
    assert run["output_data"] == {"summary": "quick"}
    task_run = await task_run_of(db, run["runId"])
    assert polls_of(slow_trigger_dev, task_run) == 0
    assert await ends_recorded(db, run["runId"]) == 1


async def test_a_new_agents_first_run_is_answered_from_the_feed_its_trigger_opened(
    make_gateway: GatewayFactory,
    trigger_dev: TestServer,
    consumer: StoreConsumer,
    db: asyncpg.Pool,
) -> None:
    """A Trigger.dev agent created a moment ago, on an environment no feed follows yet: its
    first trigger-and-wait opens the environment's feed, and the feed answers it. This replica
    looks for new environments and for due polls once an hour, so neither discovery nor a
    poll can be what answered within the call's window."""
    client = await make_gateway(
        trigger_dev_realtime=True, trigger_dev_discover_s=3600.0, follow_tick_s=3600.0
    )
    tenant = await tenant_on(client)
    runtime = task_runtime(trigger_dev)
    agent = await tenant.create_agent(output_kind="json", runtime=runtime)
    assert fake(trigger_dev)[REALTIME_REQUESTS] == []  # no feed follows the environment yet
    task = {"statuses": ["EXECUTING", "COMPLETED"], "output": {"summary": "first"}}

    waiting = asyncio.create_task(trigger_and_wait(tenant, agent, task, timeout_ms=15_000))
    run_id = await newest_run(db, agent["id"])
    task_run = await task_run_of(db, run_id)
    await feed_up(client, runtime)
    advance_run(fake(trigger_dev), task_run)
    status, run = await asyncio.wait_for(waiting, 20)

    assert status == 200, run
    assert run["output_data"] == {"summary": "first"}
    assert polls_of(trigger_dev, task_run) == 0
    feed = fake(trigger_dev)[REALTIME_REQUESTS]
    assert {request["path"] for request in feed} == {"/realtime/v1/runs"}
    assert feed[0]["query"]["offset"] == "-1"  # a snapshot, then live requests
    assert await ends_recorded(db, run_id) == 1
