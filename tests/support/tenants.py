"""An organisation with an ingest key, as a caller of the agent API holds it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support.tokens import ADMIN


@dataclass
class Tenant:
    """An organisation with an ingest key, as a caller of the agent API holds it."""

    org_id: str
    ingest_key: str
    client: TestClient[web.Request, web.Application]

    @property
    def auth(self) -> dict[str, str]:
        """The Authorization header for this tenant."""
        return {"Authorization": f"Bearer {self.ingest_key}"}

    async def create_agent(self, **fields: Any) -> dict[str, Any]:
        """Create an agent through the admin API (defaults: an eligible download agent)."""
        body = {
            "name": "Report agent",
            "output_kind": "file_download",
            "runtime": {"kind": "n8n", "webhook_url": "http://127.0.0.1:9/webhook/none"},
            **fields,
        }
        resp = await self.client.post(f"/admin/orgs/{self.org_id}/agents", json=body, headers=ADMIN)
        assert resp.status == 201, await resp.text()
        agent: dict[str, Any] = await resp.json()
        return agent

    async def create_credential(
        self,
        data: dict[str, Any],
        *,
        name: str = "CRM",
        type: str = "api_key",
        grant_to: dict[str, Any] | None = None,
    ) -> str:
        """Store a credential for this organisation through the admin API; return its id.
        ``grant_to``: an agent (as created) that may then resolve it."""
        resp = await self.client.post(
            f"/admin/orgs/{self.org_id}/credentials",
            json={"name": name, "type": type, "data": data},
            headers=ADMIN,
        )
        assert resp.status == 201, await resp.text()
        credential_id: str = (await resp.json())["id"]
        if grant_to is not None:
            await self.grant(grant_to, credential_id)
        return credential_id

    async def grant(self, agent: dict[str, Any], *credential_ids: str) -> None:
        """Add credentials to the agent's grant list (``credential_ids``); ``agent`` is kept
        up to date."""
        resp = await self.client.patch(
            f"/admin/agents/{agent['id']}",
            json={"credential_ids": [*agent.get("credential_ids", []), *credential_ids]},
            headers=ADMIN,
        )
        assert resp.status == 200, await resp.text()
        agent["credential_ids"] = (await resp.json())["credential_ids"]

    async def add_member(self, email: str) -> str:
        """Add a user to this organisation; return the user id."""
        resp = await self.client.post(
            f"/admin/orgs/{self.org_id}/users", json={"email": email}, headers=ADMIN
        )
        assert resp.status == 201, await resp.text()
        user_id: str = (await resp.json())["id"]
        return user_id


TenantFactory = Callable[..., Awaitable[Tenant]]


async def new_tenant(
    client: TestClient[web.Request, web.Application], name: str = "Acme"
) -> Tenant:
    """An organisation with an ingest key, created through ``client``'s admin API."""
    resp = await client.post("/admin/orgs", json={"name": name}, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    org_id = (await resp.json())["id"]
    resp = await client.post(f"/admin/orgs/{org_id}/keys", headers=ADMIN)
    assert resp.status == 201, await resp.text()
    return Tenant(org_id, (await resp.json())["key"], client)
