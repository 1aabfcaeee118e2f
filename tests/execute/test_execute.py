"""Workflow execute: POST /api/workflows/{workflowId}/execute, streaming and not."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from store.consumer import StoreConsumer
from tests.support.execute import (
    AGENT_1,
    AGENT_2,
    api_key,
    data_frames,
    execute_url,
    read_events,
    stream_agent,
)
from tests.support.gateways import GatewayFactory
from tests.support.runs import wait_for_run
from tests.support.runtimes import json_agent, received, webhook
from tests.support.tenants import Tenant, TenantFactory


async def test_a_streamed_run_arrives_frame_by_frame_then_done_and_the_terminator(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await stream_agent(tenant, runtime, "nodes=Agent 1&pace_ms=20")

    resp = await tenant.client.post(
        execute_url(agent["id"]),
        headers=api_key(tenant),
        json={"message": "Count to five", "stream": True, "selectedOutputs": ["agent1.content"]},
    )

    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Accel-Buffering"] == "no"
    frames = data_frames(await read_events(resp))
    assert frames[:5] == [
        json.dumps({"blockId": AGENT_1, "chunk": text}, separators=(",", ":"))
        for text in ["One", ", two", ", three", ", four", ", five"]
    ]
    done = json.loads(frames[5])
    assert list(done) == ["event", "success", "output", "metadata"]
    assert done["event"] == "done"
    assert done["success"] is True
    assert done["output"] == {AGENT_1: {"content": "One, two, three, four, five"}}
    assert isinstance(done["metadata"]["duration"], int)
    assert frames[6:] == ["[DONE]"]

    run = await wait_for_run(tenant, agent["id"], int(resp.headers["X-Run-Id"]))
    assert run["status"] == "completed"
    assert run["output_data"] == done["output"]
    assert run["duration_ms"] == done["metadata"]["duration"]
    with_input = await tenant.client.get(
        f"/api/agents/{agent['id']}/runs/{run['runId']}?include=input", headers=tenant.auth
    )
    assert (await with_input.json())["input"] == {"message": "Count to five"}


async def test_two_selected_blocks_each_carry_their_block_id(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await stream_agent(
        tenant,
        runtime,
        "nodes=Agent 1,Agent 2,Summary&interleave=1",
        nodes=("Agent 1", "Agent 2", "Summary"),
    )

    resp = await tenant.client.post(
        execute_url(agent["id"]),
        headers=api_key(tenant),
        json={
            "message": "Process this request",
            "stream": True,
            "selectedOutputs": ["AGENT 1.content", "agent2.content"],
        },
    )

    assert resp.status == 200
    frames = [json.loads(f) for f in data_frames(await read_events(resp))[:-1]]
    chunks = [f for f in frames if "blockId" in f]
    # Interleaved as the runtime sent them; the unselected "Summary" block is not streamed.
    assert [c["blockId"] for c in chunks[:4]] == [AGENT_1, AGENT_2, AGENT_1, AGENT_2]
    assert "".join(c["chunk"] for c in chunks if c["blockId"] == AGENT_1) == (
        "Agent 1: Process this request"
    )
    assert "".join(c["chunk"] for c in chunks if c["blockId"] == AGENT_2) == (
        "Agent 2: Process this request"
    )
    assert {c["blockId"] for c in chunks} == {AGENT_1, AGENT_2}
    assert set(frames[-1]["output"]) == {AGENT_1, AGENT_2}


async def test_without_selected_outputs_every_block_streams(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await stream_agent(
        tenant, runtime, "nodes=Agent 1,Agent 2", nodes=("Agent 1", "Agent 2")
    )

    resp = await tenant.client.post(
        execute_url(agent["id"]), headers=api_key(tenant), json={"message": "hi", "stream": True}
    )

    frames = [json.loads(f) for f in data_frames(await read_events(resp))[:-1]]
    assert {f["blockId"] for f in frames if "blockId" in f} == {AGENT_1, AGENT_2}


async def test_an_unknown_block_is_a_400_listing_the_known_ones(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await stream_agent(
        tenant, runtime, "nodes=Agent 1,Agent 2", nodes=("Agent 1", "Agent 2")
    )

    for selected in (["agent3.content"], ["agent1.content", "nope.content"]):
        resp = await tenant.client.post(
            execute_url(agent["id"]),
            headers=api_key(tenant),
            json={"message": "hi", "stream": True, "selectedOutputs": selected},
        )
        assert resp.status == 400
        body = await resp.json()
        assert "Unknown block" in body["error"]
        assert "agent1 (Agent 1)" in body["error"]
        assert "agent2 (Agent 2)" in body["error"]
        assert body["knownBlocks"] == ["Agent 1", "Agent 2"]
    resp = await tenant.client.post(
        execute_url(agent["id"]),
        headers=api_key(tenant),
        json={"stream": True, "selectedOutputs": ["agent1.tokens"]},
    )
    assert resp.status == 400
    assert "agent1.tokens" in (await resp.json())["error"]
    assert received(runtime) == []


async def test_without_stream_the_serialized_result_comes_back(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await stream_agent(tenant, runtime)

    resp = await tenant.client.post(
        execute_url(agent["id"]), headers=api_key(tenant), json={"message": "Count to three"}
    )

    assert resp.status == 200
    body = await resp.json()
    assert body == {
        "success": True,
        "output": {AGENT_1: {"content": "One, two, three"}},
        "error": None,
        "metadata": {"duration": body["metadata"]["duration"]},
        "runId": int(resp.headers["X-Run-Id"]),
    }


async def test_a_json_agent_answers_the_same_shapes(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "json")

    resp = await tenant.client.post(
        execute_url(agent["id"]), headers=api_key(tenant), json={"topic": "Q3"}
    )
    body = await resp.json()
    assert (resp.status, body["success"], body["output"]) == (200, True, {"echo": {"topic": "Q3"}})
    assert body["metadata"]["duration"] >= 0

    resp = await tenant.client.post(
        execute_url(agent["id"]), headers=api_key(tenant), json={"topic": "Q4", "stream": True}
    )
    frames = data_frames(await read_events(resp))
    assert frames[1:] == ["[DONE]"]
    done = json.loads(frames[0])
    assert done["event"] == "done"
    assert done["output"] == {"echo": {"topic": "Q4"}}


async def test_a_failed_workflow_is_success_false_or_an_error_frame(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "workflow-error")

    resp = await tenant.client.post(execute_url(agent["id"]), headers=api_key(tenant), json={})
    body = await resp.json()
    assert resp.status == 200
    assert body["success"] is False
    assert body["error"] == "WorkflowFailed: HTTP 500: Error in workflow"

    resp = await tenant.client.post(
        execute_url(agent["id"]), headers=api_key(tenant), json={"stream": True}
    )
    frames = data_frames(await read_events(resp))
    assert [json.loads(frames[0]), frames[1]] == [
        {"event": "error", "error": "WorkflowFailed: HTTP 500: Error in workflow"},
        "[DONE]",
    ]


async def test_the_runtime_reporting_an_error_mid_stream_is_an_in_band_error_then_done(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await stream_agent(tenant, runtime, "nodes=Agent 1&error_after=2")

    resp = await tenant.client.post(
        execute_url(agent["id"]),
        headers=api_key(tenant),
        json={"message": "Count to five", "stream": True},
    )

    assert resp.status == 200
    frames = data_frames(await read_events(resp))
    assert [json.loads(f).get("chunk") for f in frames[:2]] == ["One", ", two"]
    assert json.loads(frames[2]) == {
        "event": "error",
        "error": "Agent 1: The model provider rejected the request",
    }
    assert frames[3:] == ["[DONE]"]
    run = await wait_for_run(tenant, agent["id"], int(resp.headers["X-Run-Id"]))
    assert run["status"] == "failed"
    assert run["error"] == "Agent 1: The model provider rejected the request"
    # What was streamed before the failure stays with the run.
    assert run["output_data"] == {AGENT_1: {"content": "One, two"}}


async def test_the_runtime_dying_mid_stream_is_an_in_band_error_then_done(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await stream_agent(tenant, runtime, "nodes=Agent 1&die_after=3&pace_ms=10")

    resp = await tenant.client.post(
        execute_url(agent["id"]),
        headers=api_key(tenant),
        json={"message": "Count to five", "stream": True},
    )

    frames = data_frames(await read_events(resp))
    assert len(frames) == 5
    error = json.loads(frames[3])
    assert error["event"] == "error"
    assert error["error"].startswith("Runtime stream broke after 3 frames")
    assert frames[4] == "[DONE]"
    run = await wait_for_run(tenant, agent["id"], int(resp.headers["X-Run-Id"]))
    assert run["status"] == "failed"


async def test_the_caller_leaving_mid_stream_closes_the_runtime_at_once_and_cancels_the_run(
    make_gateway: GatewayFactory,
    make_tenant: TenantFactory,
    runtime: TestServer,
    consumer: StoreConsumer,
) -> None:
    # EXECUTE_DISCONNECT_GRACE_S=0: the former behaviour (tests/execute/test_execute_resume.py
    # has the default's grace).
    tenant = await make_tenant()
    tenant.client = await make_gateway(execute_disconnect_grace_s=0)
    agent = await stream_agent(tenant, runtime, "nodes=Agent 1&pace_ms=300")
    session = aiohttp.ClientSession()
    resp = await session.post(
        tenant.client.make_url(execute_url(agent["id"])),
        headers=api_key(tenant),
        json={"message": "Count to ten", "stream": True},
    )
    assert resp.status == 200
    run_id = int(resp.headers["X-Run-Id"])
    first = await resp.content.readuntil(b"\n\n")
    assert first.startswith(b"id: 1\ndata: ")
    assert json.loads(first[len(b"id: 1\ndata: ") :]) == {"blockId": AGENT_1, "chunk": "One"}

    left_at = time.monotonic()
    resp.close()
    await session.close()

    call = received(runtime)[0]
    while call["outcome"] == "in_progress" and time.monotonic() - left_at < 5:
        await asyncio.sleep(0.02)
    assert call["outcome"] == "disconnected"
    assert call["ended_at"] - left_at < 1.0
    assert len(call["chunks_sent_at"]) < 10
    run = await wait_for_run(tenant, agent["id"], run_id)
    assert run["status"] == "cancelled"
    assert run["error"] == "Caller disconnected after 1 frames"


async def test_a_ping_comment_goes_out_during_silence(
    make_gateway: GatewayFactory, make_tenant: TenantFactory, runtime: TestServer
) -> None:
    tenant = await make_tenant()
    tenant.client = await make_gateway(sse_ping_interval_s=0.2)
    agent = await stream_agent(tenant, runtime, "nodes=Agent 1&pace_ms=700")

    resp = await tenant.client.post(
        execute_url(agent["id"]),
        headers=api_key(tenant),
        json={"message": "Count to two", "stream": True},
    )

    assert resp.status == 200
    events = await read_events(resp)
    kinds = ["ping" if e.comment == "ping" else json.loads(e.data or "0") for e in events[:-1]]
    # Headers and pings go out before the runtime's first chunk; pings fill each silence.
    assert kinds[0] == "ping"
    first_chunk = kinds.index({"blockId": AGENT_1, "chunk": "One"})
    second_chunk = kinds.index({"blockId": AGENT_1, "chunk": ", two"})
    assert "ping" in kinds[first_chunk + 1 : second_chunk]
    assert events[-1].data == "[DONE]"


async def test_a_stream_agent_whose_webhook_answers_plain_json_still_completes(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await stream_agent(tenant, runtime, "plain=1")

    resp = await tenant.client.post(
        execute_url(agent["id"]), headers=api_key(tenant), json={"message": "hi", "stream": True}
    )

    frames = data_frames(await read_events(resp))
    assert json.loads(frames[0])["output"] == {"echo": {"message": "hi"}}
    assert frames[1] == "[DONE]"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-API-Key": "igk_wrong"}, 401),
        ({"X-API-Key": ""}, 401),
    ],
)
async def test_a_missing_or_wrong_key_is_a_401(
    tenant: Tenant, runtime: TestServer, headers: dict[str, str], status: int
) -> None:
    agent = await stream_agent(tenant, runtime)

    resp = await tenant.client.post(execute_url(agent["id"]), headers=headers, json={})

    assert resp.status == status
    assert "API key" in (await resp.json())["error"]


async def test_a_bearer_key_is_accepted_too(tenant: Tenant, runtime: TestServer) -> None:
    agent = await stream_agent(tenant, runtime)

    resp = await tenant.client.post(execute_url(agent["id"]), headers=tenant.auth, json={})

    assert resp.status == 200


async def test_tenancy_and_eligibility_follow_the_agent_api(
    tenant: Tenant, make_tenant: TenantFactory, runtime: TestServer
) -> None:
    agent = await stream_agent(tenant, runtime)
    stranger = await make_tenant("Other org")
    for workflow_id in (agent["id"], 999_999_999, "abc"):
        resp = await stranger.client.post(
            execute_url(workflow_id), headers=api_key(stranger), json={}
        )
        assert resp.status == 404
        assert (await resp.json())["error"] == "Workflow not found"

    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"allow_external_triggers": False}, 403, "allow_external_triggers"),
        ({"status": "paused"}, 422, "status"),
        ({"managed_by": "standalone"}, 422, "managed_by"),
        ({"output_kind": "file_download"}, 422, "trigger-and-download"),
    ]
    for fields, status, reason in cases:
        other = await stream_agent(tenant, runtime, **fields)
        resp = await tenant.client.post(execute_url(other["id"]), headers=api_key(tenant), json={})
        assert resp.status == status, fields
        assert reason in (await resp.json())["error"]

    task = await tenant.create_agent(
        output_kind="stream",
        runtime={
            "kind": "trigger.dev",
            "api_url": "http://127.0.0.1:9",
            "task_id": "t",
            "secret_key": "tr_x",
        },
    )
    resp = await tenant.client.post(execute_url(task["id"]), headers=api_key(tenant), json={})
    assert resp.status == 422
    assert "cannot stream" in (await resp.json())["error"]
    assert received(runtime) == []


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"[1, 2]", "JSON object"),
        (b"{not json", "not valid JSON"),
        (b'{"a": NaN}', "not valid JSON"),
        (b'{"a": 1} trailing', "not valid JSON"),
        (b'{"stream": "yes"}', "stream"),
        (b'{"selectedOutputs": "agent1.content"}', "selectedOutputs"),
    ],
)
async def test_a_malformed_body_is_a_400(
    tenant: Tenant, runtime: TestServer, body: bytes, needle: str
) -> None:
    agent = await stream_agent(tenant, runtime)

    resp = await tenant.client.post(execute_url(agent["id"]), headers=api_key(tenant), data=body)

    assert resp.status == 400
    assert needle in (await resp.json())["error"]
    assert received(runtime) == []


async def test_execute_has_its_own_rate_limit(
    make_gateway: GatewayFactory, make_tenant: TenantFactory, runtime: TestServer
) -> None:
    tenant = await make_tenant()
    tenant.client = await make_gateway(execute_rate_limit=2, execute_rate_window_s=60)
    agent = await stream_agent(tenant, runtime)

    statuses = []
    for _ in range(3):
        resp = await tenant.client.post(execute_url(agent["id"]), headers=api_key(tenant), json={})
        statuses.append(resp.status)
        await resp.read()
    assert statuses == [200, 200, 429]
    assert resp.headers["RateLimit-Policy"] == "2;w=60"
    assert int(resp.headers["Retry-After"]) >= 1
    # The agent's trigger-and-wait bucket is untouched.
    other = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger-and-wait",
        headers=tenant.auth,
        json={"timeoutMs": 200},
    )
    assert other.status != 429


async def test_the_runtime_unreachable_is_a_500_and_no_answer_in_time_a_504(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await tenant.create_agent(
        output_kind="stream", runtime={"kind": "n8n", "webhook_url": "http://127.0.0.1:9/webhook/x"}
    )
    resp = await tenant.client.post(
        execute_url(agent["id"]), headers=api_key(tenant), json={"stream": True}
    )
    assert resp.status == 500
    body = await resp.json()
    assert body["error"].startswith("Runtime invocation failed")
    assert isinstance(body["runId"], int)

    slow = await tenant.create_agent(
        output_kind="stream",
        runtime=webhook(runtime, "stream?delay_ms=3000"),
        running_timeout_ms=300,
    )
    resp = await tenant.client.post(execute_url(slow["id"]), headers=api_key(tenant), json={})
    assert resp.status == 504
    assert (await resp.json())["error"] == "Runtime did not respond within the wait window"
