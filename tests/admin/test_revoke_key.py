"""Revoking an ingest key: ``DELETE /admin/orgs/{orgId}/keys/{keyId}`` and ``admin revoke-key``."""

from __future__ import annotations

import asyncio
import uuid

from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support.backends import Backends
from tests.support.lookup_cache import admin_console
from tests.support.tenants import Tenant, new_tenant
from tests.support.tokens import ADMIN

Client = TestClient[web.Request, web.Application]


async def new_key(gateway: Client, org_id: str) -> dict[str, str]:
    resp = await gateway.post(f"/admin/orgs/{org_id}/keys", headers=ADMIN)
    assert resp.status == 201, await resp.text()
    key: dict[str, str] = await resp.json()
    return key


async def usage(gateway: Client, key: str) -> int:
    """A route any good ingest key may read: 200, or 401 for a refused key."""
    resp = await gateway.get("/api/users/me/usage-limits", headers={"X-API-Key": key})
    return resp.status


async def test_a_revoked_key_is_refused_and_the_organisations_other_keys_still_work(
    gateway: Client, tenant: Tenant
) -> None:
    spare = await new_key(gateway, tenant.org_id)
    assert await usage(gateway, spare["key"]) == 200

    resp = await gateway.delete(f"/admin/orgs/{tenant.org_id}/keys/{spare['id']}", headers=ADMIN)
    assert resp.status == 204
    assert await resp.read() == b""

    assert await usage(gateway, spare["key"]) == 401
    resp = await gateway.get(
        "/api/agents/1/runs/1", headers={"Authorization": f"Bearer {spare['key']}"}
    )
    assert resp.status == 401
    assert await usage(gateway, tenant.ingest_key) == 200
    # Revoking it again changes nothing.
    resp = await gateway.delete(f"/admin/orgs/{tenant.org_id}/keys/{spare['id']}", headers=ADMIN)
    assert resp.status == 204


async def test_a_key_the_organisation_does_not_have_is_not_found(
    gateway: Client, tenant: Tenant
) -> None:
    other = await new_tenant(gateway, "Other")
    paths = [
        f"/admin/orgs/{tenant.org_id}/keys/{uuid.uuid4()}",
        f"/admin/orgs/{tenant.org_id}/keys/not-a-uuid",
        # Another organisation's key, named under this one: not revoked.
        f"/admin/orgs/{tenant.org_id}/keys/{(await new_key(gateway, other.org_id))['id']}",
    ]
    for path in paths:
        resp = await gateway.delete(path, headers=ADMIN)
        assert resp.status == 404, path
        assert "error" in await resp.json()
    assert await usage(gateway, other.ingest_key) == 200


async def test_revoking_needs_the_admin_token(gateway: Client, tenant: Tenant) -> None:
    spare = await new_key(gateway, tenant.org_id)
    resp = await gateway.delete(
        f"/admin/orgs/{tenant.org_id}/keys/{spare['id']}", headers=tenant.auth
    )
    assert resp.status == 401
    assert await usage(gateway, spare["key"]) == 200


async def test_the_console_revokes_a_key(
    gateway: Client, tenant: Tenant, backends: Backends
) -> None:
    spare = await new_key(gateway, tenant.org_id)
    assert await usage(gateway, spare["key"]) == 200

    answer = await admin_console(backends, "revoke-key", tenant.org_id, spare["id"])

    assert answer == {"id": spare["id"], "revoked": True}
    # Another process revoked it: this replica hears of it from PostgreSQL (within a second).
    for _ in range(50):
        if await usage(gateway, spare["key"]) == 401:
            break
        await asyncio.sleep(0.02)
    assert await usage(gateway, spare["key"]) == 401
