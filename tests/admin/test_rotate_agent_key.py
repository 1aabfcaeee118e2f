"""Rotating an agent's API key (``POST /admin/agents/{agentId}/api-key``, ``admin
rotate-agent-key``), and agents that are not active: they neither report nor resolve."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.security.test_key_and_agent_cache import replicas, within_a_second
from tests.support.backends import Backends
from tests.support.gateways import GatewayFactory
from tests.support.lookup_cache import admin_console
from tests.support.runtimes import as_agent
from tests.support.tenants import Tenant, new_tenant
from tests.support.tokens import ADMIN

Client = TestClient[web.Request, web.Application]


async def register(replica: Client, tenant: Tenant, agent: dict[str, Any]) -> dict[str, Any]:
    resp = await replica.post(
        f"/api/agents/{agent['id']}/runs/register",
        json={"externalRunId": f"r-{agent['id']}"},
        headers=tenant.auth,
    )
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def report(replica: Client, run_id: int, api_key: str) -> int:
    """An output callback with ``api_key``: 202, or 401 for a refused key."""
    resp = await replica.post(
        f"/api/runs/{run_id}/callback",
        json={"type": "output", "output": {"step": 1}},
        headers={"Authorization": f"Bearer {api_key}"},
    )
    return resp.status


async def resolve(
    replica: Client, credential_id: str, api_key: str, token: str
) -> tuple[int, dict[str, Any]]:
    resp = await replica.get(
        f"/api/credentials/{credential_id}/resolve",
        headers={"Authorization": f"Bearer {api_key}", "X-Credentials-Token": token},
    )
    body: dict[str, Any] = await resp.json()
    return resp.status, body


async def test_a_rotated_key_is_refused_on_every_replica_within_a_second(
    make_gateway: GatewayFactory,
) -> None:
    a, b = await replicas(make_gateway)
    tenant = await new_tenant(a)
    agent = await tenant.create_agent(output_kind="json")
    run = await register(a, tenant, agent)
    old = agent["api_key"]
    # Both replicas have the agent behind the old key in their caches.
    assert await report(a, run["runId"], old) == 202
    assert await report(b, run["runId"], old) == 202

    resp = await a.post(f"/admin/agents/{agent['id']}/api-key", headers=ADMIN)

    assert resp.status == 200, await resp.text()
    rotated = await resp.json()
    assert rotated["id"] == agent["id"]
    new = rotated["api_key"]
    assert new.startswith("agk_")
    assert new != old
    assert await within_a_second(lambda: report(b, run["runId"], old), 401) == 401
    assert await report(a, run["runId"], old) == 401
    assert await report(b, run["runId"], new) == 202
    # A run triggered from now on carries the new key in its payload.
    resp = await a.post(f"/admin/agents/{agent['id']}/api-key", headers=tenant.auth)
    assert resp.status == 401
    resp = await a.post("/admin/agents/2147483000/api-key", headers=ADMIN)
    assert resp.status == 404


async def test_the_console_rotates_an_agent_key(gateway: Client, backends: Backends) -> None:
    tenant = await new_tenant(gateway)
    agent = await tenant.create_agent(output_kind="json")
    run = await register(gateway, tenant, agent)

    answer = await admin_console(backends, "rotate-agent-key", str(agent["id"]))

    assert answer["id"] == agent["id"]
    assert answer["api_key"] != agent["api_key"]
    assert await within_a_second(lambda: report(gateway, run["runId"], agent["api_key"]), 401)
    assert await report(gateway, run["runId"], answer["api_key"]) == 202


async def test_an_agent_that_is_not_active_neither_reports_nor_resolves(
    gateway: Client,
) -> None:
    tenant = await new_tenant(gateway)
    for status in ("paused", "archived"):
        agent = await tenant.create_agent(output_kind="json", name=f"To be {status}")
        credential_id = await tenant.create_credential({"token": "s3cr3t"}, grant_to=agent)
        run = await register(gateway, tenant, agent)
        token = run["credentialsToken"]
        assert (await resolve(gateway, credential_id, agent["api_key"], token))[0] == 200

        resp = await gateway.patch(
            f"/admin/agents/{agent['id']}", json={"status": status}, headers=ADMIN
        )
        assert resp.status == 200

        code, body = await resolve(gateway, credential_id, agent["api_key"], token)
        assert code == 403, body
        assert status in body["error"]
        assert "s3cr3t" not in str(body)
        resp = await gateway.post(
            f"/api/runs/{run['runId']}/callback",
            json={"type": "output", "complete": True, "output": {}},
            headers=as_agent(agent),
        )
        assert resp.status == 403
        assert status in (await resp.json())["error"]
