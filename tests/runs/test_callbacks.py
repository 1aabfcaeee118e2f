"""Runtime callbacks (the agent SDK's createAgentClient) and waits answered across replicas."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from gateway.runs import recording
from gateway.settings import Settings
from store.consumer import StoreConsumer
from tests.support.consumers import event_buffer
from tests.support.gateways import GatewayFactory
from tests.support.runs import wait_for_run
from tests.support.runtimes import as_agent, callbacks_answered, first_invoked_run, webhook
from tests.support.tenants import Tenant, TenantFactory


async def callback_agent(tenant: Tenant, runtime: TestServer) -> dict[str, Any]:
    """An agent whose workflow takes runs and never reports: the test plays the workflow."""
    return await tenant.create_agent(
        output_kind="json", runtime=webhook(runtime, "accepted?report=0")
    )


async def start_run(tenant: Tenant, agent: dict[str, Any]) -> int:
    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger", headers=tenant.auth, json={}
    )
    assert resp.status == 202, await resp.text()
    run_id: int = (await resp.json())["runId"]
    return run_id


async def report(
    tenant: Tenant, agent: dict[str, Any], run_id: int, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    resp = await tenant.client.post(
        f"/api/runs/{run_id}/callback", headers=as_agent(agent), json=body
    )
    return resp.status, await resp.json()


async def row(db: asyncpg.Pool, run_id: int, *, until: str | None = None) -> dict[str, Any]:
    """The run row, once it shows status ``until`` (bounded)."""
    for _ in range(200):
        record = await db.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
        assert record is not None
        if until is None or record["status"] == until:
            return dict(record)
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} never reached {until}: {dict(record)}")


async def test_a_workflow_reporting_through_callbacks_answers_the_waiting_caller(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await tenant.create_agent(output_kind="json", runtime=webhook(runtime, "accepted"))

    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger-and-wait",
        headers=tenant.auth,
        json={"input": {"result": {"summary": "done", "outputs": 2}}},
    )

    assert resp.status == 200
    run = await resp.json()
    assert (run["status"], run["output_data"], run["outputs"]) == (
        "completed",
        {"summary": "done", "outputs": 2},
        2,
    )
    # The caller may be answered before the last callback's 202 is back at the runtime: the
    # end is on the row, and handed to the waiter, before the callback route answers.
    sent = await callbacks_answered(runtime, 3)
    assert [callback["status"] for callback in sent] == [202, 202, 202]


async def test_each_callback_moves_the_run_as_the_sdk_methods_say(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, db: asyncpg.Pool
) -> None:
    agent = await callback_agent(tenant, runtime)
    run_id = await start_run(tenant, agent)

    assert await report(tenant, agent, run_id, {"type": "started"}) == (
        202,
        {"runId": run_id, "status": "running"},
    )
    await row(db, run_id, until="running")

    status, _ = await report(tenant, agent, run_id, {"type": "output", "output": {"step": 1}})
    assert status == 202
    for _ in range(100):
        if (await row(db, run_id))["output_data"] == {"step": 1}:
            break
        await asyncio.sleep(0.02)
    assert (await row(db, run_id))["status"] == "running"

    status, body = await report(
        tenant,
        agent,
        run_id,
        {
            "type": "waiting",
            "tokenId": "tok_1",
            "description": "Approve the draft",
            "output": {"step": 2},
        },
    )
    assert (status, body["status"]) == (202, "waiting")
    waiting = await row(db, run_id, until="waiting")
    assert waiting["waiting_for"] == {"tokenId": "tok_1", "description": "Approve the draft"}
    assert waiting["output_data"] == {"step": 2}

    status, _ = await report(tenant, agent, run_id, {"type": "output", "output": {"step": 3}})
    assert status == 202
    resumed = await row(db, run_id, until="running")
    assert resumed["waiting_for"] is None

    status, body = await report(
        tenant,
        agent,
        run_id,
        {"type": "output", "complete": True, "output": {"pages": 42}, "outputs": 42},
    )
    assert (status, body["status"]) == (202, "completed")
    run = await wait_for_run(tenant, agent["id"], run_id)
    assert (run["status"], run["output_data"], run["outputs"], run["error"]) == (
        "completed",
        {"pages": 42},
        42,
        None,
    )


async def test_fail_records_the_reason_and_keeps_intermediate_output(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await callback_agent(tenant, runtime)
    run_id = await start_run(tenant, agent)
    await report(tenant, agent, run_id, {"type": "output", "output": {"rows": 10}})

    status, _ = await report(
        tenant,
        agent,
        run_id,
        {
            "type": "output",
            "failed": True,
            "error": {"message": "Quota exceeded", "name": "RateLimitError", "stack": "at x"},
        },
    )

    assert status == 202
    run = await wait_for_run(tenant, agent["id"], run_id)
    assert (run["status"], run["error"], run["output_data"]) == (
        "failed",
        "RateLimitError: Quota exceeded",
        {"rows": 10},
    )


async def test_a_callback_for_an_ended_run_is_refused_and_changes_nothing(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await callback_agent(tenant, runtime)
    run_id = await start_run(tenant, agent)
    await report(tenant, agent, run_id, {"type": "output", "complete": True, "output": {"v": 1}})
    ended = await wait_for_run(tenant, agent["id"], run_id)

    for late in [
        {"type": "output", "failed": True, "error": {"message": "too late"}},
        {"type": "output", "complete": True, "output": {"v": 2}},
        {"type": "output", "output": {"v": 3}},
        {"type": "started"},
        {"type": "waiting", "tokenId": "t"},
    ]:
        status, body = await report(tenant, agent, run_id, late)
        assert status == 409, late
        assert body["runId"] == run_id
        assert body["status"] == "completed"

    await asyncio.sleep(0.2)
    assert await wait_for_run(tenant, agent["id"], run_id) == ended


async def test_a_second_end_reported_at_once_is_refused_before_the_first_is_stored(
    tenant: Tenant, runtime: TestServer
) -> None:
    # No store consumer runs: the first end is still on its way to PostgreSQL.
    agent = await callback_agent(tenant, runtime)
    run_id = await start_run(tenant, agent)

    first, _ = await report(
        tenant, agent, run_id, {"type": "output", "complete": True, "output": 1}
    )
    second, _ = await report(
        tenant, agent, run_id, {"type": "output", "failed": True, "error": "late"}
    )

    assert (first, second) == (202, 409)


async def test_only_the_runs_own_agent_key_may_report(
    tenant: Tenant, make_tenant: TenantFactory, runtime: TestServer
) -> None:
    agent = await callback_agent(tenant, runtime)
    sibling = await callback_agent(tenant, runtime)
    other_tenant = await make_tenant("Other org")
    stranger = await callback_agent(other_tenant, runtime)
    run_id = await start_run(tenant, agent)
    body = {"type": "started"}

    for headers, expected in [
        ({}, 401),
        ({"Authorization": "Bearer agk_not-a-key"}, 401),
        ({"Authorization": f"Bearer {tenant.ingest_key}"}, 401),
        (as_agent(sibling), 404),
        (as_agent(stranger), 404),
    ]:
        resp = await tenant.client.post(f"/api/runs/{run_id}/callback", headers=headers, json=body)
        assert resp.status == expected, headers
        assert "error" in await resp.json()
    missing = await tenant.client.post(
        "/api/runs/999999999/callback", headers=as_agent(agent), json=body
    )
    assert missing.status == 404


async def test_a_callback_without_valid_credentials_is_401_whatever_its_body(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await callback_agent(tenant, runtime)
    run_id = await start_run(tenant, agent)

    for headers in ({}, {"Authorization": "Bearer agk_not-a-key"}):
        for body in ({}, {"type": "finished"}, [1, 2]):
            resp = await tenant.client.post(
                f"/api/runs/{run_id}/callback", headers=headers, json=body
            )
            assert resp.status == 401, (headers, body)
            assert "error" in await resp.json()
        garbage = await tenant.client.post(
            f"/api/runs/{run_id}/callback",
            headers={**headers, "Content-Type": "application/json"},
            data=b"{not json",
        )
        assert garbage.status == 401, headers


async def test_malformed_callbacks_are_400s_naming_the_field(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await callback_agent(tenant, runtime)
    run_id = await start_run(tenant, agent)

    for body, field in [
        ({}, "type"),
        ({"type": "finished"}, "type"),
        ({"type": "output", "complete": True, "failed": True}, "failed"),
        ({"type": "started", "complete": True}, "type"),
        ({"type": "waiting", "description": "no token"}, "tokenId"),
        ({"type": "output", "complete": "yes"}, "complete"),
        ({"type": "output", "failed": True, "error": 42}, "error"),
    ]:
        status, answer = await report(tenant, agent, run_id, body)
        assert status == 400, body
        assert field in answer["details"], (body, answer)


async def test_outputs_that_are_not_a_count_are_dropped_not_refused(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await callback_agent(tenant, runtime)
    run_id = await start_run(tenant, agent)

    status, _ = await report(
        tenant,
        agent,
        run_id,
        {"type": "output", "complete": True, "output": {"a": 1}, "outputs": "5"},
    )

    assert status == 202
    run = await wait_for_run(tenant, agent["id"], run_id)
    assert (run["status"], run["outputs"], run["output_data"]) == ("completed", None, {"a": 1})


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"type": "output", "complete": True, "output": {"text": "a\u0000b"}}, "\\u0000"),
        # 1e999 is valid JSON that parses to infinity, which jsonb cannot hold.
        (b'{"type": "output", "output": {"progress": 1e999}}', "NaN or Infinity"),
        (b'{"type": "output", "complete": true, "output": [-1e999]}', "NaN or Infinity"),
    ],
)
async def test_an_output_postgresql_cannot_store_is_a_400_and_the_run_carries_on(
    tenant: Tenant,
    runtime: TestServer,
    consumer: StoreConsumer,
    body: dict[str, Any] | bytes,
    problem: str,
) -> None:
    agent = await callback_agent(tenant, runtime)
    run_id = await start_run(tenant, agent)

    resp = await tenant.client.post(
        f"/api/runs/{run_id}/callback",
        headers={**as_agent(agent), "Content-Type": "application/json"},
        data=json.dumps(body) if isinstance(body, dict) else body,
    )

    answer = await resp.json()
    assert resp.status == 400, answer  # before: 202, and the run failed later
    assert answer["error"].startswith("output cannot be stored: it contains")
    assert problem in answer["error"]
    status, _ = await report(
        tenant, agent, run_id, {"type": "output", "complete": True, "output": {"ok": 1}}
    )
    assert status == 202
    run = await wait_for_run(tenant, agent["id"], run_id)
    assert (run["status"], run["output_data"]) == ("completed", {"ok": 1})


async def test_a_wait_held_by_one_replica_is_answered_by_a_callback_landing_on_another(
    make_gateway: GatewayFactory,
    make_tenant: TenantFactory,
    runtime: TestServer,
    consumer: StoreConsumer,
) -> None:
    # Replica A re-reads its row only every 60 s: only the cross-replica wake-up can answer.
    replica_a = await make_gateway(wait_recheck_s=60.0)
    replica_b = await make_gateway()
    tenant = await make_tenant()
    agent = await callback_agent(tenant, runtime)
    waiting = asyncio.ensure_future(
        replica_a.post(
            f"/api/agents/{agent['id']}/runs/trigger-and-wait",
            headers=tenant.auth,
            json={"timeoutMs": 30000},
        )
    )
    run_id = await first_invoked_run(runtime)

    done = await replica_b.post(
        f"/api/runs/{run_id}/callback",
        headers=as_agent(agent),
        json={"type": "output", "complete": True, "output": {"answer": 42}},
    )
    assert done.status == 202

    resp = await asyncio.wait_for(waiting, 10)
    assert resp.status == 200
    run = await resp.json()
    assert (run["runId"], run["status"], run["output_data"]) == (
        run_id,
        "completed",
        {"answer": 42},
    )


async def test_an_agent_flooding_callbacks_is_refused_429_by_its_own_bucket(
    make_gateway: GatewayFactory,
    make_tenant: TenantFactory,
    runtime: TestServer,
    db: asyncpg.Pool,
    consumer: StoreConsumer,
) -> None:
    tenant = await make_tenant()
    tenant.client = await make_gateway(callback_rate_limit=2, callback_rate_window_s=3600)
    agent = await callback_agent(tenant, runtime)
    quiet = await callback_agent(tenant, runtime)
    run_id = await start_run(tenant, agent)
    statuses = [
        (await report(tenant, agent, run_id, {"type": "output", "output": n}))[0] for n in range(3)
    ]
    assert statuses == [202, 202, 429]
    refused = await tenant.client.post(
        f"/api/runs/{run_id}/callback",
        headers=as_agent(agent),
        json={"type": "output", "complete": True, "output": "late"},
    )
    assert refused.status == 429
    assert refused.headers["RateLimit-Policy"] == "2;w=3600"
    assert int(refused.headers["Retry-After"]) > 0
    assert "callbacks" in (await refused.json())["error"]
    # Nothing past the bucket was recorded; another agent's callbacks have their own bucket.
    assert (await row(db, run_id))["status"] == "running"
    other_run = await start_run(tenant, quiet)
    assert (await report(tenant, quiet, other_run, {"type": "started"}))[0] == 202


async def test_callbacks_past_a_full_event_buffer_are_503_and_nothing_held_is_trimmed(
    make_gateway: GatewayFactory,
    make_tenant: TenantFactory,
    runtime: TestServer,
    settings: Settings,
    redis_client: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = await make_tenant()
    tenant.client = await make_gateway(events_buffer_max_per_partition=3)
    agent = await callback_agent(tenant, runtime)
    run_id = await start_run(tenant, agent)
    await first_invoked_run(runtime)

    async def postgresql_away(*_: object) -> None:
        raise ConnectionRefusedError("PostgreSQL is away")

    # PostgreSQL stops taking events (no consumer runs): the buffer holds them.
    monkeypatch.setattr(recording, "record_events", postgresql_away)
    statuses = [
        (await report(tenant, agent, run_id, {"type": "output", "output": {"step": n}}))[0]
        for n in range(3)
    ]
    assert statuses == [202, 202, 202]
    refused = await tenant.client.post(
        f"/api/runs/{run_id}/callback",
        headers=as_agent(agent),
        json={"type": "output", "output": {"step": 3}},
    )
    assert refused.status == 503
    assert int(refused.headers["Retry-After"]) > 0
    assert "not recorded" in (await refused.json())["error"]

    buffer = event_buffer(settings, redis_client)
    held = await buffer.read(buffer.partition_of(run_id), 10)
    assert [entry.event.output_data for entry in held if entry.event] == [
        {"step": 0},
        {"step": 1},
        {"step": 2},
    ]
