"""The agent SDK's ``registerRun`` and ``ingestRun``: runs the gateway did not start itself."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from store.consumer import StoreConsumer
from tests.support.runs import RUN_KEYS, wait_for_run
from tests.support.runtimes import as_agent
from tests.support.tenants import Tenant, TenantFactory


def register_url(agent_id: int | str) -> str:
    return f"/api/agents/{agent_id}/runs/register"


def ingest_url(agent_id: int | str) -> str:
    return f"/api/agents/{agent_id}/runs/ingest"


async def platform_agent(tenant: Tenant, **fields: Any) -> dict[str, Any]:
    return await tenant.create_agent(name="Scheduled digest", output_kind="json", **fields)


async def standalone_agent(tenant: Tenant, **fields: Any) -> dict[str, Any]:
    return await tenant.create_agent(
        name="Nightly import", output_kind="json", managed_by="standalone", **fields
    )


async def get_run(tenant: Tenant, agent_id: int, run_id: int) -> dict[str, Any]:
    resp = await tenant.client.get(f"/api/agents/{agent_id}/runs/{run_id}", headers=tenant.auth)
    assert resp.status == 200, await resp.text()
    run: dict[str, Any] = await resp.json()
    return run


async def ingest(tenant: Tenant, agent_id: int, **body: Any) -> Any:
    return await tenant.client.post(ingest_url(agent_id), json=body, headers=tenant.auth)


async def test_a_runtime_registers_a_run_it_started_and_gets_a_credentials_token(
    tenant: Tenant,
) -> None:
    agent = await platform_agent(tenant)

    resp = await tenant.client.post(
        register_url(agent["id"]), json={"externalRunId": "run_abc123"}, headers=tenant.auth
    )

    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert set(body) == {"runId", "credentialsToken", "expiresInSeconds"}
    assert body["credentialsToken"].startswith("crt_")
    assert body["expiresInSeconds"] >= 3600
    assert resp.headers["Cache-Control"] == "no-store"
    run = await get_run(tenant, agent["id"], body["runId"])
    assert set(run) == RUN_KEYS
    assert run["status"] == "running"
    assert run["started_at"] is not None


async def test_registering_the_same_external_run_again_returns_the_same_run_with_a_fresh_token(
    tenant: Tenant, db: asyncpg.Pool
) -> None:
    agent = await platform_agent(tenant)
    first = await tenant.client.post(
        register_url(agent["id"]), json={"externalRunId": "run_abc123"}, headers=tenant.auth
    )
    again = await tenant.client.post(
        register_url(agent["id"]), json={"externalRunId": "run_abc123"}, headers=tenant.auth
    )

    assert (first.status, again.status) == (201, 200)
    a, b = await first.json(), await again.json()
    assert a["runId"] == b["runId"]
    assert a["credentialsToken"] != b["credentialsToken"]
    rows = await db.fetchval("SELECT count(*) FROM runs WHERE agent_id = $1", agent["id"])
    assert rows == 1


async def test_concurrent_registrations_of_one_external_run_make_one_run(
    tenant: Tenant, db: asyncpg.Pool
) -> None:
    agent = await platform_agent(tenant)

    answers = await asyncio.gather(
        *(
            tenant.client.post(
                register_url(agent["id"]), json={"externalRunId": "exec-7"}, headers=tenant.auth
            )
            for _ in range(8)
        )
    )

    assert sorted(r.status for r in answers) == [200] * 7 + [201]
    assert len({(await r.json())["runId"] for r in answers}) == 1
    assert await db.fetchval("SELECT count(*) FROM runs WHERE agent_id = $1", agent["id"]) == 1


async def test_the_same_external_run_id_on_two_agents_is_two_runs(tenant: Tenant) -> None:
    first, second = await platform_agent(tenant), await platform_agent(tenant)

    ids = []
    for agent in (first, second):
        resp = await tenant.client.post(
            register_url(agent["id"]), json={"externalRunId": "shared"}, headers=tenant.auth
        )
        assert resp.status == 201
        ids.append((await resp.json())["runId"])

    assert ids[0] != ids[1]


async def test_a_registered_run_is_ended_by_its_runtime_through_callbacks(
    tenant: Tenant, consumer: StoreConsumer
) -> None:
    agent = await platform_agent(tenant)
    resp = await tenant.client.post(
        register_url(agent["id"]), json={"externalRunId": "cron-1"}, headers=tenant.auth
    )
    run_id = (await resp.json())["runId"]

    done = await tenant.client.post(
        f"/api/runs/{run_id}/callback",
        json={"type": "output", "complete": True, "output": {"sent": 12}, "outputs": 12},
        headers=as_agent(agent),
    )

    assert done.status == 202, await done.text()
    run = await wait_for_run(tenant, agent["id"], run_id)
    assert (run["status"], run["output_data"], run["outputs"]) == ("completed", {"sent": 12}, 12)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"managed_by": "standalone"}, "managed_by is 'standalone'"),
        ({"status": "paused"}, "status is 'paused'"),
    ],
)
async def test_register_refuses_agents_that_cannot_have_platform_runs(
    tenant: Tenant, fields: dict[str, Any], problem: str
) -> None:
    agent = await tenant.create_agent(output_kind="json", **fields)

    resp = await tenant.client.post(
        register_url(agent["id"]), json={"externalRunId": "x"}, headers=tenant.auth
    )

    assert resp.status == 422
    assert problem in (await resp.json())["error"]


@pytest.mark.parametrize("route", [register_url, ingest_url])
async def test_register_and_ingest_refuse_strangers(
    tenant: Tenant, make_tenant: TenantFactory, route: Any
) -> None:
    platform = await platform_agent(tenant)
    standalone = await standalone_agent(tenant)
    agent = platform if route is register_url else standalone
    other = await make_tenant("Globex")
    body = {"externalRunId": "x", "status": "running"}

    no_key = await tenant.client.post(route(agent["id"]), json=body)
    bad_key = await tenant.client.post(
        route(agent["id"]), json=body, headers={"Authorization": "Bearer igk_nope"}
    )
    foreign = await tenant.client.post(route(agent["id"]), json=body, headers=other.auth)
    unknown = await tenant.client.post(route(999_999_999), json=body, headers=tenant.auth)

    assert (no_key.status, bad_key.status) == (401, 401)
    assert (foreign.status, unknown.status) == (404, 404)
    assert (await foreign.json()) == (await unknown.json())


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"externalRunId": ""},
        {"externalRunId": 42},
        {"externalRunId": "x" * 256},
    ],
)
async def test_register_needs_an_external_run_id(tenant: Tenant, body: dict[str, Any]) -> None:
    agent = await platform_agent(tenant)

    resp = await tenant.client.post(register_url(agent["id"]), json=body, headers=tenant.auth)

    assert resp.status == 400
    assert "externalRunId" in (await resp.json())["details"]


async def test_a_standalone_agent_reports_a_finished_run_in_one_call(
    tenant: Tenant, consumer: StoreConsumer
) -> None:
    agent = await standalone_agent(tenant)

    resp = await ingest(
        tenant,
        agent["id"],
        externalRunId="exec_001",
        status="completed",
        output={"pages": 42},
        outputs=42,
    )

    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert (body["status"], body["created"]) == ("completed", True)
    run = await wait_for_run(tenant, agent["id"], body["runId"])
    assert (run["status"], run["output_data"], run["outputs"]) == ("completed", {"pages": 42}, 42)
    assert run["completed_at"] is not None


async def test_ingest_upserts_by_external_run_id_through_the_run_s_life(
    tenant: Tenant, consumer: StoreConsumer
) -> None:
    agent = await standalone_agent(tenant)
    queued = await ingest(tenant, agent["id"], externalRunId="e-1", status="queued")
    run_id = (await queued.json())["runId"]
    assert (await get_run(tenant, agent["id"], run_id))["status"] == "queued"

    running = await ingest(
        tenant, agent["id"], externalRunId="e-1", status="running", output={"step": 1}
    )
    assert (await running.json()) == {"runId": run_id, "status": "running", "created": False}
    for _ in range(100):
        run = await get_run(tenant, agent["id"], run_id)
        if run["status"] == "running":
            break
        await asyncio.sleep(0.05)
    assert (run["status"], run["output_data"]) == ("running", {"step": 1})

    failed = await ingest(
        tenant,
        agent["id"],
        externalRunId="e-1",
        status="failed",
        error={"message": "Quota exceeded", "name": "QuotaError"},
    )
    assert failed.status == 202
    run = await wait_for_run(tenant, agent["id"], run_id)
    assert (run["status"], run["error"]) == ("failed", "QuotaError: Quota exceeded")
    # The last output reported is kept.
    assert run["output_data"] == {"step": 1}


async def test_a_run_that_has_ended_takes_no_more_reports(
    tenant: Tenant, consumer: StoreConsumer
) -> None:
    agent = await standalone_agent(tenant)
    first = await ingest(
        tenant, agent["id"], externalRunId="e-2", status="completed", output={"v": 1}
    )
    run_id = (await first.json())["runId"]
    await wait_for_run(tenant, agent["id"], run_id)

    for late in (
        {"status": "running"},
        {"status": "failed", "error": "late"},
        {"status": "completed", "output": {"v": 2}},
    ):
        resp = await ingest(tenant, agent["id"], externalRunId="e-2", **late)
        assert resp.status == 409, late
        body = await resp.json()
        assert (body["runId"], body["status"]) == (run_id, "completed")

    run = await get_run(tenant, agent["id"], run_id)
    assert (run["status"], run["output_data"], run["error"]) == ("completed", {"v": 1}, None)


@pytest.mark.parametrize(
    ("reported", "stored"),
    [
        ({"outputs": 7}, 7),
        ({"outputs": "7"}, None),
        ({"outputs": -1}, None),
        ({"outputs": 1.5}, None),
        ({"outputs": True}, None),
        ({"output": {"outputs": 9}}, 9),
        ({"output": {"outputs": "9"}}, None),
        ({"output": {"outputs": 9}, "outputs": 3}, 3),
    ],
)
async def test_ingested_outputs_follow_the_drop_rule(
    tenant: Tenant, consumer: StoreConsumer, reported: dict[str, Any], stored: int | None
) -> None:
    agent = await standalone_agent(tenant)

    resp = await ingest(tenant, agent["id"], externalRunId="o", status="completed", **reported)

    assert resp.status == 202, await resp.text()
    run = await wait_for_run(tenant, agent["id"], (await resp.json())["runId"])
    assert run["outputs"] == stored
    if "output" in reported:
        assert run["output_data"] == reported["output"]  # never stripped


async def test_ingest_is_for_standalone_agents_only(tenant: Tenant, db: asyncpg.Pool) -> None:
    agent = await platform_agent(tenant)

    resp = await ingest(tenant, agent["id"], externalRunId="x", status="completed")

    assert resp.status == 422
    assert "managed_by is 'platform', not 'standalone'" in (await resp.json())["error"]
    assert await db.fetchval("SELECT count(*) FROM runs WHERE agent_id = $1", agent["id"]) == 0


@pytest.mark.parametrize(
    "body",
    [
        {"status": "completed"},
        {"externalRunId": "x"},
        {"externalRunId": "x", "status": "done"},
        {"externalRunId": "x", "status": "failed", "error": 42},
    ],
)
async def test_ingest_names_the_field_it_cannot_take(tenant: Tenant, body: dict[str, Any]) -> None:
    agent = await standalone_agent(tenant)

    resp = await tenant.client.post(ingest_url(agent["id"]), json=body, headers=tenant.auth)

    assert resp.status == 400
    details = (await resp.json())["details"]
    assert set(details) <= {"externalRunId", "status", "error"}
    assert details
