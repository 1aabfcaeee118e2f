"""The agent SDK's triggerRun: POST /api/agents/{agentId}/runs/trigger, Idempotency-Key, cancel."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from store.consumer import StoreConsumer
from store.reaper import REAPED_ERROR
from tests.support.consumers import ConsumerFactory
from tests.support.gateways import GatewayFactory
from tests.support.runs import wait_for_run, wait_url
from tests.support.runtimes import first_invoked_run, json_agent, received, webhook
from tests.support.tenants import Tenant, TenantFactory


def held_wait(tenant: Tenant, agent: dict[str, Any]) -> asyncio.Future[Any]:
    """A trigger-and-wait request for ``agent``, in flight with a 30 s window."""
    return asyncio.ensure_future(
        tenant.client.post(wait_url(agent["id"]), headers=tenant.auth, json={"timeoutMs": 30000})
    )


def trigger_url(agent_id: int | str) -> str:
    return f"/api/agents/{agent_id}/runs/trigger"


async def test_trigger_answers_202_at_once_and_the_run_completes_behind_it(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "json?delay_ms=300")

    resp = await tenant.client.post(
        trigger_url(agent["id"]),
        headers=tenant.auth,
        json={"input": {"result": {"pages": 7, "outputs": 7}}},
    )

    assert resp.status == 202
    body = await resp.json()
    assert body == {"runId": body["runId"], "status": "queued"}
    run = await wait_for_run(tenant, agent["id"], body["runId"])
    assert (run["status"], run["output_data"], run["outputs"]) == (
        "completed",
        {"pages": 7, "outputs": 7},
        7,
    )
    assert [c["payload"]["runId"] for c in received(runtime)] == [body["runId"]]


async def test_a_workflow_that_reports_back_completes_a_triggered_run(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "accepted")

    resp = await tenant.client.post(
        trigger_url(agent["id"]), headers=tenant.auth, json={"input": {"result": {"ok": 1}}}
    )

    run = await wait_for_run(tenant, agent["id"], (await resp.json())["runId"])
    assert (run["status"], run["output_data"]) == ("completed", {"ok": 1})


async def test_an_unreachable_runtime_fails_the_triggered_run_with_the_reason(
    tenant: Tenant, consumer: StoreConsumer
) -> None:
    agent = await tenant.create_agent(
        output_kind="json", runtime={"kind": "n8n", "webhook_url": "http://127.0.0.1:9/webhook/x"}
    )

    resp = await tenant.client.post(trigger_url(agent["id"]), headers=tenant.auth, json={})

    assert resp.status == 202
    run = await wait_for_run(tenant, agent["id"], (await resp.json())["runId"])
    assert run["status"] == "failed"
    assert run["error"].startswith("Runtime invocation failed")


async def test_a_repeated_idempotency_key_returns_the_same_run_and_starts_nothing(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "json")
    headers = {**tenant.auth, "Idempotency-Key": "order-7731"}
    body = {"input": {"orderId": 7731}}

    first = await tenant.client.post(trigger_url(agent["id"]), headers=headers, json=body)
    run_id = (await first.json())["runId"]
    await wait_for_run(tenant, agent["id"], run_id)
    again = await tenant.client.post(trigger_url(agent["id"]), headers=headers, json=body)

    assert first.status == again.status == 202
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.json() == {"runId": run_id, "status": "completed"}
    assert len(received(runtime)) == 1
    other = await tenant.client.post(
        trigger_url(agent["id"]),
        headers={**tenant.auth, "Idempotency-Key": "order-7732"},
        json=body,
    )
    assert (await other.json())["runId"] != run_id


async def test_concurrent_requests_with_one_key_start_one_run(
    tenant: Tenant, runtime: TestServer, db: asyncpg.Pool
) -> None:
    agent = await json_agent(tenant, runtime, "json")
    headers = {**tenant.auth, "Idempotency-Key": "burst-1"}

    answers = await asyncio.gather(
        *(tenant.client.post(trigger_url(agent["id"]), headers=headers, json={}) for _ in range(8))
    )

    assert {a.status for a in answers} == {202}
    [run_id] = {(await a.json())["runId"] for a in answers}
    assert await first_invoked_run(runtime) == run_id
    await asyncio.sleep(0.2)  # room for a second invocation, were there one
    assert len(received(runtime)) == 1
    # The requests that lost the race left no run behind them.
    assert await db.fetchval("SELECT count(*) FROM runs WHERE agent_id = $1", agent["id"]) == 1


async def test_an_idempotency_key_reused_with_another_body_is_refused(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await json_agent(tenant, runtime, "json")
    headers = {**tenant.auth, "Idempotency-Key": "k-1"}
    first = await tenant.client.post(
        trigger_url(agent["id"]), headers=headers, json={"input": {"a": 1}}
    )

    resp = await tenant.client.post(
        trigger_url(agent["id"]), headers=headers, json={"input": {"a": 2}}
    )

    assert resp.status == 422
    body = await resp.json()
    assert "Idempotency-Key" in body["error"]
    assert body["runId"] == (await first.json())["runId"]


async def test_an_idempotency_key_older_than_24_hours_starts_a_new_run(
    tenant: Tenant, runtime: TestServer, db: asyncpg.Pool
) -> None:
    agent = await json_agent(tenant, runtime, "json")
    headers = {**tenant.auth, "Idempotency-Key": "daily-report"}
    first = (await (await tenant.client.post(trigger_url(agent["id"]), headers=headers)).json())[
        "runId"
    ]
    await db.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE run_id = $1",
        first,
    )

    later = await tenant.client.post(trigger_url(agent["id"]), headers=headers)

    assert later.status == 202
    assert "Idempotent-Replayed" not in later.headers
    assert (await later.json())["runId"] != first


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "naïve"])
async def test_a_malformed_idempotency_key_is_a_400(
    tenant: Tenant, runtime: TestServer, key: str
) -> None:
    agent = await json_agent(tenant, runtime, "json")

    resp = await tenant.client.post(
        trigger_url(agent["id"]), headers={**tenant.auth, "Idempotency-Key": key}
    )

    assert resp.status == 400
    assert "Idempotency-Key" in (await resp.json())["error"]


async def test_triggers_have_their_own_bucket_and_a_file_agent_is_refused(
    make_gateway: GatewayFactory,
    make_tenant: TenantFactory,
    runtime: TestServer,
    consumer: StoreConsumer,
) -> None:
    tenant = await make_tenant()
    tenant.client = await make_gateway(trigger_rate_limit=2)
    agent = await json_agent(tenant, runtime, "json")
    statuses = [
        (await tenant.client.post(trigger_url(agent["id"]), headers=tenant.auth)).status
        for _ in range(3)
    ]
    assert statuses == [202, 202, 429]
    # The wait bucket is untouched by triggers.
    wait = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger-and-wait", headers=tenant.auth, json={}
    )
    assert wait.status == 200

    file_agent = await tenant.create_agent(runtime=webhook(runtime, "report.csv"))
    resp = await tenant.client.post(trigger_url(file_agent["id"]), headers=tenant.auth)
    assert resp.status == 422
    assert "trigger-and-download" in (await resp.json())["error"]


async def test_cancel_ends_a_run_and_the_waiting_caller_sees_cancelled(
    tenant: Tenant, make_tenant: TenantFactory, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "accepted?report=0")
    waiting = held_wait(tenant, agent)
    run_id = await first_invoked_run(runtime)
    other = await make_tenant("Other org")
    cancel_url = f"/api/agents/{agent['id']}/runs/{run_id}/cancel"

    assert (await tenant.client.post(cancel_url, headers=other.auth)).status == 404
    resp = await tenant.client.post(cancel_url, headers=tenant.auth)

    assert resp.status == 200
    assert await resp.json() == {"runId": run_id, "status": "cancelled"}
    answer = await asyncio.wait_for(waiting, 10)
    assert answer.status == 200
    assert (await answer.json())["status"] == "cancelled"
    again = await tenant.client.post(cancel_url, headers=tenant.auth)
    assert again.status == 409
    assert (await again.json())["status"] == "cancelled"


async def test_the_reaper_ends_a_run_nobody_reports_on_and_wakes_its_waiter(
    tenant: Tenant,
    runtime: TestServer,
    db: asyncpg.Pool,
    make_consumer: ConsumerFactory,
) -> None:
    await make_consumer(reap_every_s=0.1)
    agent = await json_agent(tenant, runtime, "accepted?report=0")
    waiting = held_wait(tenant, agent)
    run_id = await first_invoked_run(runtime)

    # Its replica died, say: only the deadline is left to end it.
    await db.execute(
        "UPDATE runs SET deadline = $2 WHERE id = $1",
        run_id,
        dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1),
    )

    answer = await asyncio.wait_for(waiting, 10)
    run = await answer.json()
    assert (answer.status, run["status"], run["error"]) == (200, "failed", REAPED_ERROR)


async def test_an_unreachable_runtime_is_named_once_and_without_its_host(
    tenant: Tenant, consumer: StoreConsumer
) -> None:
    agent = await tenant.create_agent(
        output_kind="json", runtime={"kind": "n8n", "webhook_url": "http://127.0.0.1:9/webhook/x"}
    )

    resp = await tenant.client.post(wait_url(agent["id"]), headers=tenant.auth, json={})

    body = await resp.json()
    assert resp.status == 500
    # Before: "Runtime invocation failed: Runtime invocation failed: Cannot connect to host …"
    assert (
        body["error"]
        == "Runtime invocation failed: Cannot connect to the runtime (Connection refused)"
    )
    run = await wait_for_run(tenant, agent["id"], body["runId"])
    assert run["error"] == body["error"]
