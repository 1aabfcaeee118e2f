"""An agent resolves only the credentials on its grant list (``credential_ids``); an operator
lists credentials (never their data), rotates their data (same id) and deletes them."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support.backends import Backends
from tests.support.lookup_cache import admin_console
from tests.support.tenants import Tenant, new_tenant
from tests.support.tokens import ADMIN

Client = TestClient[web.Request, web.Application]


async def registered(tenant: Tenant, agent: dict[str, Any], external: str) -> str:
    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/register",
        json={"externalRunId": external},
        headers=tenant.auth,
    )
    assert resp.status == 201, await resp.text()
    token: str = (await resp.json())["credentialsToken"]
    return token


async def resolve(
    tenant: Tenant, credential_id: str, agent: dict[str, Any], token: str
) -> tuple[int, dict[str, Any]]:
    resp = await tenant.client.get(
        f"/api/credentials/{credential_id}/resolve",
        headers={"Authorization": f"Bearer {agent['api_key']}", "X-Credentials-Token": token},
    )
    body: dict[str, Any] = await resp.json()
    return resp.status, body


async def test_an_agent_resolves_only_what_it_was_granted(gateway: Client) -> None:
    tenant = await new_tenant(gateway)
    crm_agent = await tenant.create_agent(output_kind="json", name="CRM agent")
    mail_agent = await tenant.create_agent(output_kind="json", name="Mail agent")
    crm = await tenant.create_credential({"token": "crm-secret"}, grant_to=crm_agent)
    mail = await tenant.create_credential({"token": "mail-secret"}, grant_to=mail_agent)
    crm_token = await registered(tenant, crm_agent, "crm")

    assert (await resolve(tenant, crm, crm_agent, crm_token))[0] == 200
    status, body = await resolve(tenant, mail, crm_agent, crm_token)
    assert status == 403
    assert body["error"] == "The credential is not granted to this agent (its credential_ids)"
    assert "mail-secret" not in str(body)

    # The grant list is an agent setting: granting opens it, taking it away closes it again.
    await tenant.grant(crm_agent, mail)
    assert (await resolve(tenant, mail, crm_agent, crm_token))[1]["data"] == {
        "token": "mail-secret"
    }
    resp = await gateway.patch(
        f"/admin/agents/{crm_agent['id']}", json={"credential_ids": [crm]}, headers=ADMIN
    )
    assert (await resp.json())["credential_ids"] == [crm]
    assert (await resolve(tenant, mail, crm_agent, crm_token))[0] == 403


async def test_a_grant_names_a_credential_of_the_agents_organisation(gateway: Client) -> None:
    tenant, other = await new_tenant(gateway), await new_tenant(gateway, "Other")
    agent = await tenant.create_agent(output_kind="json")
    foreign = await other.create_credential({"token": "theirs"})
    for wanted in (foreign, str(uuid.uuid4())):
        resp = await gateway.patch(
            f"/admin/agents/{agent['id']}", json={"credential_ids": [wanted]}, headers=ADMIN
        )
        assert resp.status == 400
        assert "credential_ids" in (await resp.json())["details"]
    resp = await gateway.post(
        f"/admin/orgs/{tenant.org_id}/agents",
        json={
            "name": "x",
            "runtime": {"kind": "n8n", "webhook_url": "http://127.0.0.1:9/"},
            "credential_ids": [foreign],
        },
        headers=ADMIN,
    )
    assert resp.status == 400


async def test_credentials_are_listed_without_their_data_rotated_and_deleted(
    gateway: Client, db: asyncpg.Pool
) -> None:
    tenant = await new_tenant(gateway)
    agent = await tenant.create_agent(output_kind="json")
    credential_id = await tenant.create_credential({"token": "before"}, name="CRM", grant_to=agent)
    token = await registered(tenant, agent, "rotating")

    resp = await gateway.get(f"/admin/orgs/{tenant.org_id}/credentials", headers=ADMIN)
    assert resp.status == 200
    listed = await resp.json()
    assert [(c["id"], c["name"], c["type"]) for c in listed] == [(credential_id, "CRM", "api_key")]
    assert "before" not in str(listed)
    assert "data" not in listed[0]

    resp = await gateway.put(
        f"/admin/orgs/{tenant.org_id}/credentials/{credential_id}/data",
        json={"data": {"token": "after"}},
        headers=ADMIN,
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["id"] == credential_id
    assert (await resolve(tenant, credential_id, agent, token))[1]["data"] == {"token": "after"}

    resp = await gateway.delete(
        f"/admin/orgs/{tenant.org_id}/credentials/{credential_id}", headers=ADMIN
    )
    assert resp.status == 204
    assert (await resolve(tenant, credential_id, agent, token))[0] == 404
    grants = await db.fetchval("SELECT credential_ids FROM agents WHERE id = $1", agent["id"])
    assert grants == []
    resp = await gateway.delete(
        f"/admin/orgs/{tenant.org_id}/credentials/{credential_id}", headers=ADMIN
    )
    assert resp.status == 404


async def test_another_organisation_cannot_touch_a_credential(gateway: Client) -> None:
    tenant, other = await new_tenant(gateway), await new_tenant(gateway, "Other")
    credential_id = await tenant.create_credential({"token": "mine"})
    base = f"/admin/orgs/{other.org_id}/credentials/{credential_id}"
    resp = await gateway.put(f"{base}/data", json={"data": {"token": "x"}}, headers=ADMIN)
    assert resp.status == 404
    assert (await gateway.delete(base, headers=ADMIN)).status == 404
    resp = await gateway.get(f"/admin/orgs/{other.org_id}/credentials", headers=ADMIN)
    assert await resp.json() == []
    for path in (f"/admin/orgs/{tenant.org_id}/credentials", f"{base}/data"):
        resp = await gateway.get(path, headers=tenant.auth)
        assert resp.status in (401, 405)


async def test_the_console_lists_rotates_and_deletes(gateway: Client, backends: Backends) -> None:
    tenant = await new_tenant(gateway)
    credential_id = await tenant.create_credential({"token": "one"})

    listed: Any = await admin_console(backends, "list-credentials", tenant.org_id)
    assert [c["id"] for c in listed] == [credential_id]
    rotated = await admin_console(
        backends, "rotate-credential", tenant.org_id, credential_id, '{"data": {"token": "two"}}'
    )
    assert rotated["id"] == credential_id
    deleted = await admin_console(backends, "delete-credential", tenant.org_id, credential_id)
    assert deleted == {"id": credential_id, "deleted": True}
