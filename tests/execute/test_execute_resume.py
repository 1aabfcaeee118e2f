"""Resumable execute streams: numbered frames, kept in Redis, resumed or followed on any replica
(GET /api/workflows/{workflowId}/executions/{executionId}/stream with Last-Event-ID)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from store.consumer import StoreConsumer
from tests.support.execute import (
    AGENT_1,
    Event,
    api_key,
    data_frames,
    execute_url,
    parse_event,
    read_events,
    stream_agent,
)
from tests.support.gateways import GatewayFactory
from tests.support.runs import wait_for_run
from tests.support.runtimes import json_agent
from tests.support.tenants import Tenant, TenantFactory

WORDS = " ".join(f"w{i}" for i in range(10))


def stream_url(agent_id: int, run_id: int | str) -> str:
    """The resume route of an execution."""
    return f"/api/workflows/{agent_id}/executions/{run_id}/stream"


async def two_replicas(
    make_gateway: GatewayFactory, make_tenant: TenantFactory, **settings: Any
) -> tuple[Tenant, TestClient[web.Request, web.Application]]:
    """A tenant on replica A, and replica B beside it (same PostgreSQL and Redis)."""
    tenant = await make_tenant()
    tenant.client = await make_gateway(**settings)
    return tenant, await make_gateway(**settings)


async def cut_after(tenant: Tenant, agent_id: int, count: int) -> tuple[int, list[Event]]:
    """Start a streamed execute, read ``count`` frames, then drop the connection."""
    session = aiohttp.ClientSession()
    try:
        resp = await session.post(
            tenant.client.make_url(execute_url(agent_id)),
            headers=api_key(tenant),
            json={"message": WORDS, "stream": True},
        )
        assert resp.status == 200, await resp.text()
        run_id = int(resp.headers["X-Run-Id"])
        assert resp.headers["Link"] == f'<{stream_url(agent_id, run_id)}>; rel="resume"'
        events: list[Event] = []
        while len(events) < count:
            raw = await resp.content.readuntil(b"\n\n")
            event = parse_event(raw[:-2].decode(), 0.0)
            if event.data is not None:
                events.append(event)
        resp.close()
    finally:
        await session.close()
    return run_id, events


async def follow(
    client: TestClient[web.Request, web.Application],
    tenant: Tenant,
    agent_id: int,
    run_id: int | str,
    last_event_id: int | None = None,
) -> aiohttp.ClientResponse:
    headers = api_key(tenant)
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    return await client.get(stream_url(agent_id, run_id), headers=headers)


def assert_whole(events: list[Event]) -> dict[str, Any]:
    """Every frame once, numbered 1, 2, … in order, chunks then ``done`` then ``[DONE]``."""
    frames = [e for e in events if e.data is not None]
    assert [e.id for e in frames] == list(range(1, len(frames) + 1))
    assert frames[-1].data == "[DONE]"
    done: dict[str, Any] = json.loads(frames[-2].data or "")
    assert done["event"] == "done", done
    chunks = [json.loads(e.data or "") for e in frames[:-2]]
    assert all(c["blockId"] == AGENT_1 for c in chunks)
    assert "".join(c["chunk"] for c in chunks) == done["output"][AGENT_1]["content"]
    return done


async def test_every_frame_of_a_stream_carries_its_number_as_id(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await stream_agent(tenant, runtime)

    resp = await tenant.client.post(
        execute_url(agent["id"]), headers=api_key(tenant), json={"message": WORDS, "stream": True}
    )

    assert resp.status == 200
    events = await read_events(resp)
    done = assert_whole(events)
    assert done["output"][AGENT_1]["content"].endswith("w9")


async def test_a_stream_cut_after_n_frames_resumes_on_the_other_replica_every_frame_once(
    make_gateway: GatewayFactory,
    make_tenant: TenantFactory,
    runtime: TestServer,
    consumer: StoreConsumer,
) -> None:
    tenant, other = await two_replicas(make_gateway, make_tenant)
    agent = await stream_agent(tenant, runtime, "nodes=Agent 1&pace_ms=60")

    run_id, first = await cut_after(tenant, agent["id"], 4)
    assert [e.id for e in first] == [1, 2, 3, 4]
    resp = await follow(other, tenant, agent["id"], run_id, last_event_id=4)

    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "text/event-stream"
    rest = await read_events(resp)
    done = assert_whole(first + rest)
    assert done["success"] is True
    run = await wait_for_run(tenant, agent["id"], run_id)
    assert run["status"] == "completed"
    assert run["output_data"] == done["output"]


async def test_resuming_after_the_end_replays_the_rest_and_after_the_terminator_is_204(
    make_gateway: GatewayFactory, make_tenant: TenantFactory, runtime: TestServer
) -> None:
    tenant, other = await two_replicas(make_gateway, make_tenant)
    agent = await stream_agent(tenant, runtime)
    resp = await tenant.client.post(
        execute_url(agent["id"]), headers=api_key(tenant), json={"message": WORDS, "stream": True}
    )
    whole = await read_events(resp)
    run_id = int(resp.headers["X-Run-Id"])
    frames = [e for e in whole if e.data is not None]

    rest = await read_events(await follow(other, tenant, agent["id"], run_id, last_event_id=2))
    everything = await read_events(await follow(other, tenant, agent["id"], run_id))
    by_query = await other.get(
        stream_url(agent["id"], run_id) + "?lastEventId=5", headers=api_key(tenant)
    )
    after_end = await follow(other, tenant, agent["id"], run_id, last_event_id=frames[-1].id)

    assert [(e.id, e.data) for e in rest] == [(e.id, e.data) for e in frames[2:]]
    assert [(e.id, e.data) for e in everything] == [(e.id, e.data) for e in frames]
    assert data_frames(await read_events(by_query)) == [e.data for e in frames[5:]]
    assert after_end.status == 204


async def test_unknown_foreign_expired_and_malformed_resumes_are_clear_json_errors(
    make_gateway: GatewayFactory, make_tenant: TenantFactory, runtime: TestServer
) -> None:
    tenant = await make_tenant()
    tenant.client = await make_gateway(execute_stream_retention_s=1)
    stranger = await make_tenant("Globex")
    agent = await stream_agent(tenant, runtime)
    resp = await tenant.client.post(
        execute_url(agent["id"]), headers=api_key(tenant), json={"message": "hi", "stream": True}
    )
    await read_events(resp)
    run_id = int(resp.headers["X-Run-Id"])
    trigger = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger", headers=tenant.auth, json={"input": {}}
    )

    unknown = await follow(tenant.client, tenant, agent["id"], 999_999_999)
    foreign = await follow(tenant.client, stranger, agent["id"], run_id)
    other_workflow = await follow(tenant.client, tenant, agent["id"] + 1000, run_id)
    not_an_execute = await follow(
        tenant.client, tenant, agent["id"], (await trigger.json())["runId"]
    )
    malformed = await follow(tenant.client, tenant, agent["id"], run_id, last_event_id=-1)
    no_key = await tenant.client.get(stream_url(agent["id"], run_id))

    for answer in (unknown, foreign, other_workflow, not_an_execute):
        assert answer.status == 404
        assert await answer.json() == {"error": "Execution not found"}
    assert malformed.status == 400
    assert "Last-Event-ID" in (await malformed.json())["error"]
    assert no_key.status == 401

    await asyncio.sleep(3.5)  # retention (1 s) and the settling time of an end (3 s)
    expired = await follow(tenant.client, tenant, agent["id"], run_id, last_event_id=2)
    assert expired.status == 410
    body = await expired.json()
    assert "no longer kept" in body["error"]
    assert body["runId"] == run_id


async def test_an_async_execution_is_followed_live_on_another_replica(
    make_gateway: GatewayFactory,
    make_tenant: TenantFactory,
    runtime: TestServer,
    consumer: StoreConsumer,
) -> None:
    tenant, other = await two_replicas(make_gateway, make_tenant)
    streaming = await stream_agent(tenant, runtime, "nodes=Agent 1&pace_ms=50")
    answering = await json_agent(tenant, runtime, "json?delay_ms=200")
    async_mode = {**api_key(tenant), "X-Execution-Mode": "async"}

    accepted = await tenant.client.post(
        execute_url(streaming["id"]), headers=async_mode, json={"message": WORDS}
    )
    assert accepted.status == 202, await accepted.text()
    task = await accepted.json()
    assert task["links"]["stream"] == stream_url(streaming["id"], task["taskId"])
    live = await other.get(task["links"]["stream"], headers=api_key(tenant))
    events = await read_events(live)
    done = assert_whole(events)
    assert done["success"] is True

    accepted = await tenant.client.post(
        execute_url(answering["id"]), headers=async_mode, json={"topic": "Q3"}
    )
    task = await accepted.json()
    live = await other.get(task["links"]["stream"], headers=api_key(tenant))
    frames = data_frames(await read_events(live))
    assert json.loads(frames[0])["output"] == {"echo": {"topic": "Q3"}}
    assert frames[1:] == ["[DONE]"]


async def test_a_caller_who_leaves_is_cancelled_after_the_grace_unless_someone_follows(
    make_gateway: GatewayFactory,
    make_tenant: TenantFactory,
    runtime: TestServer,
    consumer: StoreConsumer,
) -> None:
    tenant, other = await two_replicas(make_gateway, make_tenant, execute_disconnect_grace_s=0.5)
    agent = await stream_agent(tenant, runtime, "nodes=Agent 1&pace_ms=150")

    # Nobody comes back: the run is cancelled once the grace has passed, and says why.
    abandoned, _ = await cut_after(tenant, agent["id"], 2)
    run = await wait_for_run(tenant, agent["id"], abandoned)
    assert run["status"] == "cancelled"
    reason = "Caller disconnected after 2 frames and nobody followed the execution within 0.5 s"
    assert run["error"] == reason
    tail = data_frames(await read_events(await follow(other, tenant, agent["id"], abandoned, 2)))
    assert json.loads(tail[-2]) == {"event": "error", "error": reason}
    assert tail[-1] == "[DONE]"

    # Resumed within the grace (on the other replica): the run goes on to its end.
    kept, first = await cut_after(tenant, agent["id"], 2)
    # Back a moment later, well inside the 0.5 s (a slow machine's follow must still fit).
    await asyncio.sleep(0.05)
    rest = await read_events(await follow(other, tenant, agent["id"], kept, last_event_id=2))
    assert assert_whole(first + rest)["success"] is True
    run = await wait_for_run(tenant, agent["id"], kept)
    assert run["status"] == "completed"
