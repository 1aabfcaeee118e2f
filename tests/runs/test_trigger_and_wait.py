"""Trigger-and-wait: POST /api/agents/{agentId}/runs/trigger-and-wait on n8n, every response row."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import asyncpg
from aiohttp.test_utils import TestServer

from store.consumer import StoreConsumer
from tests.support.gateways import GatewayFactory
from tests.support.prometheus import metric_sum
from tests.support.runs import RUN_KEYS, parse_time, wait_for_run, wait_url
from tests.support.runtimes import as_agent, json_agent, received, webhook
from tests.support.tenants import Tenant, TenantFactory
from tests.support.tokens import ADMIN


async def test_a_run_that_ends_in_the_window_answers_200_with_the_whole_run(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "json")
    result = {"pdfUrl": "https://files.example.com/report.pdf", "pages": 42, "outputs": 1}

    resp = await tenant.client.post(
        wait_url(agent["id"]),
        headers=tenant.auth,
        json={"input": {"topic": "Q3 financial summary", "result": result}, "timeoutMs": 120000},
    )

    assert resp.status == 200, await resp.text()
    run = await resp.json()
    assert set(run) == RUN_KEYS
    assert run["agentId"] == agent["id"]
    assert run["status"] == "completed"
    assert run["output_data"] == result  # outputs is lifted, never stripped
    assert run["outputs"] == 1
    assert run["error"] is None
    started, completed = parse_time(run["started_at"]), parse_time(run["completed_at"])
    assert parse_time(run["created_at"]) <= started <= completed
    assert abs(run["duration_ms"] - (completed - started) / dt.timedelta(milliseconds=1)) <= 1
    # The same row is what a poll of the run shows.
    polled = await tenant.client.get(
        f"/api/agents/{agent['id']}/runs/{run['runId']}", headers=tenant.auth
    )
    assert await polled.json() == run


async def test_outputs_that_are_not_a_non_negative_integer_are_dropped_silently(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "json")
    for value in ["1", -1, 2.5, True, None]:
        result = {"summary": "ok", "outputs": value}
        resp = await tenant.client.post(
            wait_url(agent["id"]), headers=tenant.auth, json={"input": {"result": result}}
        )
        run = await resp.json()
        assert resp.status == 200
        assert run["outputs"] is None, value
        assert run["output_data"] == result


async def test_the_runtime_receives_the_merged_input_and_what_it_needs_to_call_back(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(
        tenant, runtime, "json", default_input={"topic": "default", "lang": "en"}
    )

    resp = await tenant.client.post(
        wait_url(agent["id"]), headers=tenant.auth, json={"input": {"topic": "Q3"}}
    )

    run = await resp.json()
    [call] = received(runtime)
    payload = call["payload"]
    assert payload["runId"] == run["runId"]
    assert payload["agentId"] == agent["id"]
    assert payload["input"] == {"topic": "Q3", "lang": "en"}
    assert payload["agentApiKey"] == agent["api_key"]
    assert payload["callbackUrl"].endswith(f"/api/runs/{run['runId']}/callback")
    assert call["headers"]["X-N8N-Auth"] == "shared-secret"
    assert run["output_data"] == {"echo": {"topic": "Q3", "lang": "en"}}


async def test_a_workflow_error_is_a_failed_run_in_a_200(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "workflow-error")

    resp = await tenant.client.post(wait_url(agent["id"]), headers=tenant.auth, json={})

    run = await resp.json()
    assert resp.status == 200
    assert run["status"] == "failed"
    assert "Error in workflow" in run["error"]
    assert run["output_data"] is None


async def test_a_failed_run_keeps_the_intermediate_output_it_reported(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "accepted")

    resp = await tenant.client.post(
        wait_url(agent["id"]), headers=tenant.auth, json={"input": {"fail": "Renderer crashed"}}
    )

    run = await resp.json()
    assert resp.status == 200
    assert run["status"] == "failed"
    assert run["error"] == "WorkflowError: Renderer crashed"
    assert run["output_data"] == {"progress": 50}


async def test_an_answer_that_is_not_json_fails_the_run_with_the_reason(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "garbage")

    resp = await tenant.client.post(wait_url(agent["id"]), headers=tenant.auth, json={})

    run = await resp.json()
    assert resp.status == 200
    assert run["status"] == "failed"
    assert run["error"].startswith("WorkflowReturnedInvalidJson")


async def test_a_webhook_silent_for_the_whole_window_is_a_504_and_stays_failed(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "json?delay_ms=5000")

    resp = await tenant.client.post(
        wait_url(agent["id"]), headers=tenant.auth, json={"timeoutMs": 300}
    )

    assert resp.status == 504
    body = await resp.json()
    assert body == {
        "error": "Runtime did not respond within the wait window",
        "runId": body["runId"],
    }
    run = await wait_for_run(tenant, agent["id"], body["runId"])
    assert run["status"] == "failed"
    # A late completion from the workflow cannot resurrect it.
    late = await tenant.client.post(
        f"/api/runs/{body['runId']}/callback",
        headers=as_agent(agent),
        json={"type": "output", "complete": True, "output": {"late": True}},
    )
    assert late.status == 409
    assert await wait_for_run(tenant, agent["id"], body["runId"]) == run


async def test_the_window_is_capped_by_the_agents_running_timeout(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "json?delay_ms=10000", running_timeout_ms=300)

    began = time.monotonic()
    resp = await tenant.client.post(
        wait_url(agent["id"]), headers=tenant.auth, json={"timeoutMs": 60000}
    )

    assert resp.status == 504
    assert time.monotonic() - began < 5  # the 60 s asked for were capped to 0.3 s


async def test_a_run_still_in_flight_when_the_window_elapses_answers_202_and_goes_on(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "accepted?report=0")

    resp = await tenant.client.post(
        wait_url(agent["id"]), headers=tenant.auth, json={"timeoutMs": 300}
    )

    assert resp.status == 202
    body = await resp.json()
    assert body == {
        "runId": body["runId"],
        "agentId": agent["id"],
        "status": "running",
        "timedOut": True,
    }
    # The workflow reports later; the run is driven to its end.
    done = await tenant.client.post(
        f"/api/runs/{body['runId']}/callback",
        headers=as_agent(agent),
        json={"type": "output", "complete": True, "output": {"pages": 3}, "outputs": 3},
    )
    assert done.status == 202
    run = await wait_for_run(tenant, agent["id"], body["runId"])
    assert (run["status"], run["output_data"], run["outputs"]) == ("completed", {"pages": 3}, 3)


async def test_a_runtime_that_cannot_be_invoked_is_a_500_with_the_failed_run(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    unreachable = await tenant.create_agent(
        output_kind="json", runtime={"kind": "n8n", "webhook_url": "http://127.0.0.1:9/webhook/x"}
    )
    unregistered = await json_agent(tenant, runtime, "no-such-webhook")

    for agent in (unreachable, unregistered):
        resp = await tenant.client.post(wait_url(agent["id"]), headers=tenant.auth, json={})
        assert resp.status == 500
        body = await resp.json()
        assert body["error"].startswith("Runtime invocation failed")
        run = await wait_for_run(tenant, agent["id"], body["runId"])
        assert run["status"] == "failed"
        assert run["error"] == body["error"]


async def test_callers_and_agents_that_may_not_wait_are_refused(
    tenant: Tenant, make_tenant: Any, runtime: TestServer
) -> None:
    agent = await json_agent(tenant, runtime, "json")
    other = await make_tenant("Other org")
    cases: list[tuple[dict[str, Any], dict[str, str], int]] = [
        ({}, {}, 401),
        ({}, {"Authorization": "Bearer igk_wrong"}, 401),
        ({}, other.auth, 404),
        ({"allow_external_triggers": False}, tenant.auth, 403),
        ({"managed_by": "standalone"}, tenant.auth, 422),
        ({"status": "paused"}, tenant.auth, 422),
        ({"output_kind": "file_download"}, tenant.auth, 422),
    ]
    for change, headers, status in cases:
        patched = await tenant.client.patch(
            f"/admin/agents/{agent['id']}",
            json={
                "allow_external_triggers": True,
                "managed_by": "platform",
                "status": "active",
                "output_kind": "json",
                **change,
            },
            headers=ADMIN,
        )
        assert patched.status == 200
        resp = await tenant.client.post(wait_url(agent["id"]), headers=headers, json={})
        assert resp.status == status, (change, headers)
        assert "error" in await resp.json()
    assert received(runtime) == []


async def test_bad_bodies_are_400s_naming_the_field(tenant: Tenant, runtime: TestServer) -> None:
    agent = await json_agent(tenant, runtime, "json")
    for body, field in [
        ({"timeoutMs": "soon"}, "timeoutMs"),
        ({"timeoutMs": -5}, "timeoutMs"),
        ({"input": [1, 2]}, "input"),
        ({"userId": "not-a-uuid"}, "userId"),
    ]:
        resp = await tenant.client.post(wait_url(agent["id"]), headers=tenant.auth, json=body)
        assert resp.status == 400
        assert field in (await resp.json())["details"]


async def test_wait_and_download_share_one_bucket_of_five_per_agent(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "json")
    for _ in range(3):
        resp = await tenant.client.post(wait_url(agent["id"]), headers=tenant.auth, json={})
        assert resp.status == 200
    await tenant.client.patch(
        f"/admin/agents/{agent['id']}",
        json={"output_kind": "file_download", "runtime": webhook(runtime, "report.csv")},
        headers=ADMIN,
    )
    for _ in range(2):
        resp = await tenant.client.post(
            f"/api/agents/{agent['id']}/runs/trigger-and-download", headers=tenant.auth
        )
        assert resp.status == 200
        await resp.read()
    await tenant.client.patch(
        f"/admin/agents/{agent['id']}", json={"output_kind": "json"}, headers=ADMIN
    )

    resp = await tenant.client.post(wait_url(agent["id"]), headers=tenant.auth, json={})

    assert resp.status == 429
    body = await resp.json()
    assert body["retryAfterMs"] > 0
    assert int(resp.headers["Retry-After"]) >= 1
    assert resp.headers["RateLimit-Policy"] == "5;w=60"


async def test_user_attribution_keeps_members_and_drops_strangers(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, db: asyncpg.Pool
) -> None:
    agent = await json_agent(tenant, runtime, "json")
    member = await tenant.add_member("ana@example.com")
    stranger = "5b7c2a0e-7d0c-4f7e-9a57-2c1f6b0e9d11"

    ids = []
    for user in (member, stranger):
        resp = await tenant.client.post(
            wait_url(agent["id"]), headers=tenant.auth, json={"userId": user}
        )
        assert resp.status == 200
        ids.append((await resp.json())["runId"])

    rows = {
        r["id"]: r["created_by"]
        for r in await db.fetch("SELECT id, created_by FROM runs WHERE id = ANY($1)", ids)
    }
    assert str(rows[ids[0]]) == member
    assert rows[ids[1]] is None


async def test_a_caller_who_leaves_does_not_lose_the_runs_result(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "json?delay_ms=500")

    request = asyncio.ensure_future(
        tenant.client.post(
            wait_url(agent["id"]),
            headers=tenant.auth,
            json={"input": {"result": {"kept": True}}, "timeoutMs": 5000},
        )
    )
    while not received(runtime):
        await asyncio.sleep(0.02)
    request.cancel()
    run_id = received(runtime)[0]["payload"]["runId"]

    run = await wait_for_run(tenant, agent["id"], run_id)
    assert run["status"] == "completed"
    assert run["output_data"] == {"kept": True}


async def test_the_replica_with_the_runtimes_answer_answers_without_the_store_consumer(
    tenant: Tenant, runtime: TestServer, make_gateway: GatewayFactory
) -> None:
    """No store consumer runs: the replica that got the runtime's answer has applied the end
    itself, so its caller gets the 200 and a GET on another replica, right after, shows the
    same terminal row (read-your-writes on any replica)."""
    other = await make_gateway()
    agent = await json_agent(tenant, runtime, "json")

    resp = await tenant.client.post(
        wait_url(agent["id"]),
        headers=tenant.auth,
        json={"input": {"result": {"answer": 42}}, "timeoutMs": 10000},
    )

    assert resp.status == 200, await resp.text()
    run = await resp.json()
    assert (run["status"], run["output_data"]) == ("completed", {"answer": 42})
    polled = await other.get(f"/api/agents/{agent['id']}/runs/{run['runId']}", headers=tenant.auth)
    assert await polled.json() == run


async def test_held_waits_are_read_again_in_one_statement_per_interval_however_many_wait(
    make_gateway: GatewayFactory, make_tenant: TenantFactory, runtime: TestServer
) -> None:
    """Fifty callers wait on runs whose workflow has not reported: once per WAIT_RECHECK_S
    one statement reads all fifty rows (as the metrics show), and each is still answered by its
    run's callback."""
    held = 50
    replica = await make_gateway(wait_recheck_s=0.2, sync_rate_limit=1000)
    tenant = await make_tenant()
    tenant = Tenant(tenant.org_id, tenant.ingest_key, replica)
    agent = await tenant.create_agent(
        output_kind="json", runtime=webhook(runtime, "accepted?report=0")
    )
    calls = [
        asyncio.ensure_future(
            replica.post(wait_url(agent["id"]), headers=tenant.auth, json={"timeoutMs": 60000})
        )
        for _ in range(held)
    ]

    async def scrape() -> str:
        resp = await replica.get("/metrics")
        return await resp.text()

    for _ in range(500):
        page = await scrape()
        if metric_sum(page, "agent_gateway_run_waits_in_flight") == held:
            break
        await asyncio.sleep(0.02)
    assert metric_sum(page, "agent_gateway_run_waits_in_flight") == held
    reads = metric_sum(page, "agent_gateway_run_wait_reads_total", reason="interval")
    named = metric_sum(page, "agent_gateway_run_wait_runs_read_total", reason="interval")
    for _ in range(500):
        page = await scrape()
        if metric_sum(page, "agent_gateway_run_wait_reads_total", reason="interval") >= reads + 3:
            break
        await asyncio.sleep(0.02)
    more_reads = metric_sum(page, "agent_gateway_run_wait_reads_total", reason="interval") - reads
    more_named = (
        metric_sum(page, "agent_gateway_run_wait_runs_read_total", reason="interval") - named
    )
    assert more_reads >= 3
    assert more_named == held * more_reads  # every statement named every run waited on

    run_ids = [call["payload"]["runId"] for call in received(runtime)]
    assert len(run_ids) == held
    for run_id in run_ids:
        done = await replica.post(
            f"/api/runs/{run_id}/callback",
            headers=as_agent(agent),
            json={"type": "output", "complete": True, "output": {"run": run_id}},
        )
        assert done.status == 202
    answers = [await (await call).json() for call in calls]
    assert sorted(a["runId"] for a in answers) == sorted(run_ids)
    assert all(a["output_data"] == {"run": a["runId"]} for a in answers)


async def runs_of(db: asyncpg.Pool, agent_id: int) -> list[int]:
    """The ids of every run the agent has, oldest first."""
    rows = await db.fetch("SELECT id FROM runs WHERE agent_id = $1 ORDER BY id", agent_id)
    return [row["id"] for row in rows]


async def test_a_wait_cut_mid_run_and_retried_with_its_key_answers_the_one_run_at_its_end(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, db: asyncpg.Pool
) -> None:
    """A balancer cuts the caller's connection while the workflow is still working; the caller
    retries with the same Idempotency-Key and gets that run's result, not a second run."""
    agent = await json_agent(tenant, runtime, "json?delay_ms=2000")
    headers = {**tenant.auth, "Idempotency-Key": "invoice-run-41"}
    body = {"input": {"result": {"invoice": 41}}, "timeoutMs": 20_000}

    cut = asyncio.ensure_future(
        tenant.client.post(wait_url(agent["id"]), headers=headers, json=body)
    )
    while not received(runtime):
        await asyncio.sleep(0.02)
    cut.cancel()
    run_id = received(runtime)[0]["payload"]["runId"]
    assert await db.fetchval("SELECT status FROM runs WHERE id = $1", run_id) == "running"
    retry = await tenant.client.post(wait_url(agent["id"]), headers=headers, json=body)

    assert retry.status == 200, await retry.text()
    assert retry.headers["Idempotent-Replayed"] == "true"
    run = await retry.json()
    assert (run["runId"], run["status"]) == (run_id, "completed")
    assert run["output_data"] == {"invoice": 41}
    assert len(received(runtime)) == 1
    assert await runs_of(db, agent["id"]) == [run_id]


async def test_a_wait_retried_after_its_run_ended_answers_the_terminal_row_at_once(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, db: asyncpg.Pool
) -> None:
    agent = await json_agent(tenant, runtime, "json")
    headers = {**tenant.auth, "Idempotency-Key": "weekly-digest-2026-48"}
    body = {"input": {"result": {"digest": "ready"}}}

    first = await tenant.client.post(wait_url(agent["id"]), headers=headers, json=body)
    again = await tenant.client.post(wait_url(agent["id"]), headers=headers, json=body)

    assert (first.status, again.status) == (200, 200)
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.json() == await first.json()
    assert len(received(runtime)) == 1
    assert len(await runs_of(db, agent["id"])) == 1


async def test_a_retry_waits_within_its_own_window_and_answers_202_until_the_run_ends(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, db: asyncpg.Pool
) -> None:
    """The workflow reports through callbacks, later than the caller's window: each retry waits
    its window and answers 202 with the same run; once the run ended, the retry answers 200."""
    agent = await json_agent(tenant, runtime, "accepted?report=0")
    headers = {**tenant.auth, "Idempotency-Key": "slow-report"}
    body = {"input": {"topic": "Q4"}, "timeoutMs": 300}

    first = await tenant.client.post(wait_url(agent["id"]), headers=headers, json=body)
    retry = await tenant.client.post(wait_url(agent["id"]), headers=headers, json=body)
    first_body, retry_body = await first.json(), await retry.json()
    run_id = first_body["runId"]
    done = await tenant.client.post(
        f"/api/runs/{run_id}/callback",
        headers=as_agent(agent),
        json={"type": "output", "complete": True, "output": {"pages": 12}},
    )
    assert done.status == 202, await done.text()
    after = await tenant.client.post(wait_url(agent["id"]), headers=headers, json=body)

    assert (first.status, retry.status) == (202, 202)
    assert (
        retry_body
        == {**first_body, "status": "running"}
        == {
            "runId": run_id,
            "agentId": agent["id"],
            "status": "running",
            "timedOut": True,
        }
    )
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert after.status == 200
    assert after.headers["Idempotent-Replayed"] == "true"
    assert (await after.json())["output_data"] == {"pages": 12}
    assert len(received(runtime)) == 1
    assert await runs_of(db, agent["id"]) == [run_id]


async def test_a_key_reused_with_another_body_or_on_another_route_is_a_422(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, db: asyncpg.Pool
) -> None:
    agent = await json_agent(tenant, runtime, "json")
    headers = {**tenant.auth, "Idempotency-Key": "k-77"}

    first = await tenant.client.post(
        wait_url(agent["id"]), headers=headers, json={"input": {"topic": "Q3"}}
    )
    other_body = await tenant.client.post(
        wait_url(agent["id"]), headers=headers, json={"input": {"topic": "Q4"}}
    )
    other_route = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger", headers=headers, json={"input": {"topic": "Q3"}}
    )

    run_id = (await first.json())["runId"]
    for refused in (other_body, other_route):
        assert refused.status == 422
        answer = await refused.json()
        assert "Idempotency-Key" in answer["error"]
        assert answer["runId"] == run_id
    assert len(received(runtime)) == 1
    assert await runs_of(db, agent["id"]) == [run_id]


async def test_a_malformed_key_on_trigger_and_wait_is_a_400_and_starts_nothing(
    tenant: Tenant, runtime: TestServer, db: asyncpg.Pool
) -> None:
    agent = await json_agent(tenant, runtime, "json")

    resp = await tenant.client.post(
        wait_url(agent["id"]), headers={**tenant.auth, "Idempotency-Key": "two words"}, json={}
    )

    assert resp.status == 400
    assert "Idempotency-Key" in (await resp.json())["error"]
    assert await runs_of(db, agent["id"]) == []
