"""Trigger.dev agents: runs triggered as tasks and followed by polling until they end.

trigger-and-wait, trigger and cancel, against the fake Trigger.dev API.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from devkit.fakes.trigger_dev import CANCELS, POLLS, RUNS, TRIGGERS, create_fake_trigger_dev
from store.consumer import StoreConsumer
from tests.support.gateways import GatewayFactory
from tests.support.polling import eventually
from tests.support.runs import RUN_KEYS, parse_time, wait_for_run, wait_url
from tests.support.tenants import Tenant, TenantFactory
from tests.support.tokens import ADMIN

SECRET = "tr_dev_fake"  # the fake's own key
IN_FLIGHT = {"queued", "running", "waiting"}


def task_runtime(trigger_dev: TestServer, task_id: str = "summarise") -> dict[str, Any]:
    """A Trigger.dev runtime config pointing at the fake."""
    return {
        "kind": "trigger.dev",
        "api_url": str(trigger_dev.make_url("")).rstrip("/"),
        "task_id": task_id,
        "secret_key": SECRET,
    }


async def task_agent(
    tenant: Tenant, trigger_dev: TestServer, task_id: str = "summarise"
) -> dict[str, Any]:
    """An eligible JSON agent whose runs are Trigger.dev task runs."""
    return await tenant.create_agent(output_kind="json", runtime=task_runtime(trigger_dev, task_id))


def run_url(agent_id: int, run_id: int) -> str:
    return f"/api/agents/{agent_id}/runs/{run_id}"


def trigger_of(trigger_dev: TestServer, run_id: int) -> dict[str, Any]:
    """The trigger call the fake received for the gateway's run ``run_id``."""
    [call] = [c for c in trigger_dev.app[TRIGGERS] if c["body"]["payload"]["runId"] == run_id]
    return call


def task_run_id(trigger_dev: TestServer, run_id: int) -> str:
    """The Trigger.dev run id the fake created for the gateway's run ``run_id``."""
    key = trigger_of(trigger_dev, run_id)["body"]["options"]["idempotencyKey"]
    [rid] = [rid for rid, run in trigger_dev.app[RUNS].items() if run["idempotency_key"] == key]
    return rid


def polls_of(trigger_dev: TestServer, task_run: str) -> list[dict[str, Any]]:
    return [p for p in trigger_dev.app[POLLS] if p["id"] == task_run]


async def trigger_and_wait(
    tenant: Tenant, agent: dict[str, Any], task_input: dict[str, Any], timeout_ms: int = 10_000
) -> tuple[int, dict[str, Any]]:
    resp = await tenant.client.post(
        wait_url(agent["id"]),
        headers=tenant.auth,
        json={"input": task_input, "timeoutMs": timeout_ms},
    )
    body: dict[str, Any] = await resp.json()
    return resp.status, body


async def tenant_on(client: TestClient[web.Request, web.Application]) -> Tenant:
    """An organisation with an ingest key, created through this replica's admin API."""
    resp = await client.post("/admin/orgs", json={"name": "Acme"}, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    org_id = (await resp.json())["id"]
    resp = await client.post(f"/admin/orgs/{org_id}/keys", headers=ADMIN)
    assert resp.status == 201, await resp.text()
    return Tenant(org_id, (await resp.json())["key"], client)


async def test_a_task_that_completes_in_the_window_answers_200_with_its_output(
    tenant: Tenant, trigger_dev: TestServer, consumer: StoreConsumer
) -> None:
    agent = await task_agent(tenant, trigger_dev)
    output = {"summary": "Revenue up 12%", "pages": 3, "outputs": 2}

    status, run = await trigger_and_wait(
        tenant, agent, {"topic": "Q3", "statuses": ["EXECUTING", "COMPLETED"], "output": output}
    )

    assert status == 200, run
    assert set(run) == RUN_KEYS
    assert run["agentId"] == agent["id"]
    assert run["status"] == "completed"
    assert run["output_data"] == output  # outputs is lifted, never stripped
    assert run["outputs"] == 2
    assert run["error"] is None
    created = parse_time(run["created_at"])
    started, completed = parse_time(run["started_at"]), parse_time(run["completed_at"])
    assert created <= started <= completed
    assert isinstance(run["duration_ms"], int)
    assert run["duration_ms"] >= 0
    # The same row is what a poll of the run shows.
    polled = await tenant.client.get(run_url(agent["id"], run["runId"]), headers=tenant.auth)
    assert await polled.json() == run


@pytest.mark.parametrize("value", ["3", -1, 2.5], ids=["string", "negative", "float"])
async def test_outputs_that_are_not_a_non_negative_integer_are_dropped_silently(
    tenant: Tenant, trigger_dev: TestServer, consumer: StoreConsumer, value: Any
) -> None:
    agent = await task_agent(tenant, trigger_dev)
    output = {"summary": "ok", "outputs": value}

    status, run = await trigger_and_wait(
        tenant, agent, {"statuses": ["COMPLETED"], "output": output}
    )

    assert status == 200, run
    assert run["status"] == "completed"
    assert run["outputs"] is None
    assert run["output_data"] == output


async def test_a_failed_task_is_a_failed_run_with_its_error_message(
    tenant: Tenant, trigger_dev: TestServer, consumer: StoreConsumer
) -> None:
    agent = await task_agent(tenant, trigger_dev)

    status, run = await trigger_and_wait(
        tenant, agent, {"statuses": ["EXECUTING", "FAILED"], "error": "Renderer crashed"}
    )

    assert status == 200, run
    assert run["status"] == "failed"
    assert "Renderer crashed" in run["error"]
    assert run["outputs"] is None
    assert run["completed_at"] is not None


@pytest.mark.parametrize("name", ["EXPIRED", "TIMED_OUT"])
async def test_a_task_that_expired_or_timed_out_is_a_failed_run(
    tenant: Tenant, trigger_dev: TestServer, consumer: StoreConsumer, name: str
) -> None:
    agent = await task_agent(tenant, trigger_dev)

    status, run = await trigger_and_wait(tenant, agent, {"statuses": [name]})

    assert status == 200, run
    assert run["status"] == "failed"
    assert run["error"]


async def test_a_task_cancelled_on_trigger_dev_is_a_cancelled_run(
    tenant: Tenant, trigger_dev: TestServer, consumer: StoreConsumer
) -> None:
    agent = await task_agent(tenant, trigger_dev)

    status, run = await trigger_and_wait(tenant, agent, {"statuses": ["EXECUTING", "CANCELED"]})

    assert status == 200, run
    assert run["status"] == "cancelled"
    assert run["output_data"] is None


async def test_trigger_dev_receives_the_payload_the_key_and_an_idempotency_key(
    tenant: Tenant, trigger_dev: TestServer, consumer: StoreConsumer
) -> None:
    agent = await tenant.create_agent(
        output_kind="json",
        runtime=task_runtime(trigger_dev),
        default_input={"topic": "default", "lang": "en"},
    )

    status, run = await trigger_and_wait(
        tenant, agent, {"topic": "Q3", "statuses": ["EXECUTING", "COMPLETED"]}
    )

    assert status == 200, run
    run_id = run["runId"]
    call = trigger_of(trigger_dev, run_id)
    assert call["task"] == "summarise"
    assert CIMultiDict(call["headers"])["Authorization"] == f"Bearer {SECRET}"
    payload = call["body"]["payload"]
    merged = {"topic": "Q3", "lang": "en", "statuses": ["EXECUTING", "COMPLETED"]}
    assert payload["runId"] == run_id
    assert payload["agentId"] == agent["id"]
    assert payload["input"] == merged
    assert payload["agentApiKey"] == agent["api_key"]
    assert payload["callbackUrl"] == str(tenant.client.make_url(f"/api/runs/{run_id}/callback"))
    assert call["body"]["options"]["idempotencyKey"].startswith(f"agent-gateway-run-{run_id}-")
    polls = polls_of(trigger_dev, task_run_id(trigger_dev, run_id))
    assert len(polls) == 2
    for poll in polls:
        headers = CIMultiDict(poll["headers"])
        assert headers["x-trigger-api-version"] == "2025-07-16"
        assert headers["Authorization"] == f"Bearer {SECRET}"
    # The task's default output echoes the merged input.
    assert run["output_data"] == {"echo": merged}


async def test_a_run_not_readable_yet_is_polled_again_until_it_completes(
    tenant: Tenant, trigger_dev: TestServer, consumer: StoreConsumer
) -> None:
    agent = await task_agent(tenant, trigger_dev)

    status, run = await trigger_and_wait(
        tenant,
        agent,
        {"not_ready_polls": 2, "statuses": ["COMPLETED"], "output": {"summary": "late"}},
    )

    assert status == 200, run
    assert run["status"] == "completed"
    assert run["output_data"] == {"summary": "late"}
    assert len(polls_of(trigger_dev, task_run_id(trigger_dev, run["runId"]))) == 3


async def test_an_elapsed_window_answers_202_and_the_run_is_still_followed_to_its_end(
    tenant: Tenant, trigger_dev: TestServer, consumer: StoreConsumer
) -> None:
    agent = await task_agent(tenant, trigger_dev)
    task_input = {
        "statuses": ["QUEUED", "QUEUED", "EXECUTING", "COMPLETED"],
        "output": {"summary": "slow but done"},
    }

    began = time.monotonic()
    status, body = await trigger_and_wait(tenant, agent, task_input, timeout_ms=300)
    elapsed = time.monotonic() - began

    assert status == 202, body
    assert set(body) == {"runId", "agentId", "status", "timedOut"}
    assert body["agentId"] == agent["id"]
    assert body["timedOut"] is True
    assert body["status"] in IN_FLIGHT
    assert 0.3 <= elapsed < 2.0
    run = await wait_for_run(tenant, agent["id"], body["runId"])
    assert run["status"] == "completed"
    assert run["output_data"] == {"summary": "slow but done"}


async def test_a_run_is_followed_to_its_end_after_the_replica_that_started_it_stops(
    make_gateway: GatewayFactory,
    trigger_dev: TestServer,
    consumer: StoreConsumer,
    db: asyncpg.Pool,
) -> None:
    a = await make_gateway()
    tenant_a = await tenant_on(a)
    agent = await task_agent(tenant_a, trigger_dev)
    task_input = {
        "statuses": ["QUEUED", "QUEUED", "EXECUTING", "COMPLETED"],
        "output": {"summary": "survived"},
    }

    status, body = await trigger_and_wait(tenant_a, agent, task_input, timeout_ms=300)
    assert status == 202, body
    run_id = body["runId"]
    await a.close()
    task_run = task_run_id(trigger_dev, run_id)
    polls_when_a_closed = len(polls_of(trigger_dev, task_run))
    row_status = await db.fetchval("SELECT status FROM runs WHERE id = $1", run_id)
    assert row_status in IN_FLIGHT  # the run had not ended while A was up

    b = await make_gateway()
    run = await wait_for_run(Tenant(tenant_a.org_id, tenant_a.ingest_key, b), agent["id"], run_id)

    assert run["status"] == "completed"
    assert run["output_data"] == {"summary": "survived"}
    assert len(polls_of(trigger_dev, task_run)) > polls_when_a_closed


async def test_an_unknown_task_answers_500_and_the_run_is_failed(
    tenant: Tenant, trigger_dev: TestServer, consumer: StoreConsumer
) -> None:
    agent = await task_agent(tenant, trigger_dev, task_id="missing")

    status, body = await trigger_and_wait(tenant, agent, {"topic": "Q3"})

    assert status == 500, body
    assert set(body) == {"error", "runId"}
    assert "Task not found" in body["error"]
    assert SECRET not in body["error"]
    run = await wait_for_run(tenant, agent["id"], body["runId"])
    assert run["status"] == "failed"
    assert "Task not found" in run["error"]


async def test_a_cancel_ends_a_held_trigger_and_wait_and_cancels_the_task(
    tenant: Tenant,
    make_tenant: TenantFactory,
    trigger_dev: TestServer,
    consumer: StoreConsumer,
    db: asyncpg.Pool,
) -> None:
    agent = await task_agent(tenant, trigger_dev)
    waiting = asyncio.create_task(
        trigger_and_wait(tenant, agent, {"statuses": ["EXECUTING"] * 30}, timeout_ms=20_000)
    )
    try:

        async def followed_run() -> asyncpg.Record | None:
            row: asyncpg.Record | None = await db.fetchrow(
                "SELECT id, runtime_run_id FROM runs WHERE agent_id = $1 "
                "AND runtime_run_id IS NOT NULL ORDER BY id DESC LIMIT 1",
                agent["id"],
            )
            return row

        row = await eventually(followed_run)
        run_id, task_run = row["id"], row["runtime_run_id"]
        cancel_url = f"{run_url(agent['id'], run_id)}/cancel"

        # Another organisation cannot see, let alone cancel, the run.
        other = await make_tenant("Globex")
        resp = await other.client.post(cancel_url, headers=other.auth)
        assert resp.status == 404, await resp.text()
        assert not waiting.done()

        resp = await tenant.client.post(cancel_url, headers=tenant.auth)
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {"runId": run_id, "status": "cancelled"}

        status, run = await asyncio.wait_for(waiting, 10)
    finally:
        waiting.cancel()

    assert status == 200, run
    assert run["runId"] == run_id
    assert run["status"] == "cancelled"
    await eventually(lambda: trigger_dev.app[CANCELS])
    assert trigger_dev.app[CANCELS] == [task_run]

    again = await tenant.client.post(cancel_url, headers=tenant.auth)
    assert again.status == 409
    body = await again.json()
    assert body["runId"] == run_id
    assert body["status"] == "cancelled"


async def test_an_async_trigger_answers_202_at_once_and_the_task_is_followed_to_its_end(
    tenant: Tenant, trigger_dev: TestServer, consumer: StoreConsumer
) -> None:
    agent = await task_agent(tenant, trigger_dev)

    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger",
        headers=tenant.auth,
        json={"input": {"statuses": ["EXECUTING", "COMPLETED"], "output": {"summary": "bg"}}},
    )

    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert set(body) == {"runId", "status"}
    assert body["status"] == "queued"
    run = await wait_for_run(tenant, agent["id"], body["runId"])
    assert run["status"] == "completed"
    assert run["output_data"] == {"summary": "bg"}


@pytest.fixture
async def slow_trigger_dev() -> AsyncIterator[TestServer]:
    """The fake Trigger.dev API, taking half a second to answer a trigger."""
    app = create_fake_trigger_dev()

    @web.middleware
    async def slow_trigger(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.endswith("/trigger"):
            await asyncio.sleep(0.5)
        return await handler(request)

    app.middlewares.append(slow_trigger)
    server = TestServer(app)
    await server.start_server()
    yield server
    await server.close()


async def test_a_run_cancelled_before_trigger_dev_answered_the_trigger_is_cancelled_there(
    tenant: Tenant, slow_trigger_dev: TestServer, consumer: StoreConsumer
) -> None:
    agent = await task_agent(tenant, slow_trigger_dev)
    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger",
        headers=tenant.auth,
        json={"input": {"statuses": ["EXECUTING"]}},
    )
    run_id = (await resp.json())["runId"]

    resp = await tenant.client.post(f"{run_url(agent['id'], run_id)}/cancel", headers=tenant.auth)
    assert resp.status == 200, await resp.text()

    runs = slow_trigger_dev.app[RUNS]
    [task_run] = await eventually(lambda: list(runs.keys()))
    assert (await wait_for_run(tenant, agent["id"], run_id))["status"] == "cancelled"
    # The task Trigger.dev started for the cancelled run must not be left running there.
    assert await eventually(lambda: slow_trigger_dev.app[CANCELS], bound_s=1.5) == [task_run]


async def test_a_held_wait_cancelled_before_trigger_dev_answered_still_cancels_the_task(
    tenant: Tenant, slow_trigger_dev: TestServer, consumer: StoreConsumer, db: asyncpg.Pool
) -> None:
    agent = await task_agent(tenant, slow_trigger_dev)
    waiting = asyncio.ensure_future(
        tenant.client.post(
            wait_url(agent["id"]),
            headers=tenant.auth,
            json={"input": {"statuses": ["EXECUTING"]}, "timeoutMs": 20000},
        )
    )
    run_id = None
    for _ in range(250):
        run_id = await db.fetchval("SELECT max(id) FROM runs WHERE agent_id = $1", agent["id"])
        if run_id is not None:
            break
        await asyncio.sleep(0.02)
    assert run_id is not None

    resp = await tenant.client.post(f"{run_url(agent['id'], run_id)}/cancel", headers=tenant.auth)
    assert resp.status == 200

    answer = await asyncio.wait_for(waiting, 10)
    assert (answer.status, (await answer.json())["status"]) == (200, "cancelled")
    [task_run] = await eventually(lambda: list(slow_trigger_dev.app[RUNS].keys()))
    assert await eventually(lambda: slow_trigger_dev.app[CANCELS], bound_s=1.5) == [task_run]
