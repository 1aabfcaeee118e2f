"""The admin API (``/admin``): what an agent settings page would call."""

from __future__ import annotations

from aiohttp import web

from gateway.http.authentication import require_admin
from gateway.http.keys import ADMIN_SERVICE, CREDENTIAL_SERVICE, SETTINGS
from gateway.http.path_ids import path_id, path_uuid
from gateway.http.request_parsing import read_json_object
from gateway.http.views import agent_view, created_agent_view

routes = web.RouteTableDef()


async def _body(request: web.Request) -> dict[str, object]:
    return await read_json_object(
        request, limit=request.app[SETTINGS].max_request_body, allow_empty=True
    )


@routes.post("/admin/orgs")
async def create_org(request: web.Request) -> web.Response:
    """``{name}`` → ``{id, name}``."""
    require_admin(request)
    return web.json_response(
        await request.app[ADMIN_SERVICE].create_org(await _body(request)), status=201
    )


@routes.post("/admin/orgs/{orgId}/keys")
async def create_key(request: web.Request) -> web.Response:
    """A new ingest key, shown once."""
    require_admin(request)
    org_id = path_uuid(request, "orgId", "Organisation")
    await _body(request)
    return web.json_response(await request.app[ADMIN_SERVICE].create_ingest_key(org_id), status=201)


@routes.delete("/admin/orgs/{orgId}/keys/{keyId}")
async def revoke_key(request: web.Request) -> web.Response:
    """Revoke an ingest key: refused on every replica from now on."""
    require_admin(request)
    org_id = path_uuid(request, "orgId", "Organisation")
    key_id = path_uuid(request, "keyId", "Ingest key")
    await request.app[ADMIN_SERVICE].revoke_ingest_key(org_id, key_id)
    return web.Response(status=204)


@routes.post("/admin/orgs/{orgId}/users")
async def create_user(request: web.Request) -> web.Response:
    """``{email}`` → ``{id}``, a member of the organisation."""
    require_admin(request)
    org_id = path_uuid(request, "orgId", "Organisation")
    result = await request.app[ADMIN_SERVICE].create_user(org_id, await _body(request))
    return web.json_response(result, status=201)


@routes.post("/admin/orgs/{orgId}/agents")
async def create_agent(request: web.Request) -> web.Response:
    """A new agent, with its API key shown once."""
    require_admin(request)
    org_id = path_uuid(request, "orgId", "Organisation")
    created = await request.app[ADMIN_SERVICE].create_agent(org_id, await _body(request))
    return web.json_response(created_agent_view(created), status=201)


@routes.patch("/admin/agents/{agentId}")
async def update_agent(request: web.Request) -> web.Response:
    """Change any of an agent's settings."""
    require_admin(request)
    agent_id = path_id(request, "agentId", "Agent")
    agent = await request.app[ADMIN_SERVICE].update_agent(agent_id, await _body(request))
    return web.json_response(agent_view(agent))


@routes.post("/admin/orgs/{orgId}/credentials")
async def create_credential(request: web.Request) -> web.Response:
    """``{name, type, data}`` → ``{id, name, type}``; the data is sealed at rest."""
    require_admin(request)
    org_id = path_uuid(request, "orgId", "Organisation")
    result = await request.app[CREDENTIAL_SERVICE].create(org_id, await _body(request))
    return web.json_response(result, status=201)
