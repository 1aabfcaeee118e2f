"""Bodies the fuzzer found turning into 500s: each is now a 400 that says why."""

from __future__ import annotations

from aiohttp.test_utils import TestServer

from tests.support.runtimes import json_agent
from tests.support.tenants import Tenant
from tests.support.tokens import ADMIN


async def test_a_nul_character_in_trigger_input_is_a_400(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await json_agent(tenant, runtime, "accepted?report=0")

    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger",
        json={"input": {"name\u0000": ["a\u0000b"]}},
        headers=tenant.auth,
    )

    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "Invalid request body"
    assert "\\u0000" in str(body["details"])


async def test_a_nul_character_in_an_admin_body_is_a_400(tenant: Tenant) -> None:
    org = await tenant.client.post("/admin/orgs", json={"name": "A\u0000B"}, headers=ADMIN)
    agent = await tenant.client.post(
        f"/admin/orgs/{tenant.org_id}/agents",
        json={
            "name": "x",
            "runtime": {"kind": "n8n", "webhook_url": "http://127.0.0.1:9/\u0000"},
        },
        headers=ADMIN,
    )

    assert org.status == 400
    assert agent.status == 400


async def test_a_patched_runtime_without_its_kind_is_a_400(
    tenant: Tenant, runtime: TestServer
) -> None:
    agent = await json_agent(tenant, runtime, "json")

    resp = await tenant.client.patch(
        f"/admin/agents/{agent['id']}",
        json={"runtime": {"api_url": "http://0/", "secret_key": "s", "task_id": "t"}},
        headers=ADMIN,
    )

    assert resp.status == 400
    assert (await resp.json())["details"] == {
        "runtime": {"kind": ["Missing data for required field."]}
    }
