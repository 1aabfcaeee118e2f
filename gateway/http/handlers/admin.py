"""The admin API (``/admin``): what an agent settings page would call."""

from __future__ import annotations

from aiohttp import web

from gateway.http.access.authentication import authenticate_admin
from gateway.http.app_keys import ADMIN_SERVICE, CREDENTIAL_SERVICE, SETTINGS
from gateway.http.parsing.bodies import read_json_object
from gateway.http.parsing.path_ids import path_id, path_uuid
from gateway.http.views import (
    agent_view,
    created_agent_view,
    created_credential_view,
    created_ingest_key_view,
    created_org_view,
    created_user_view,
    credential_info_view,
)

routes = web.RouteTableDef()


async def _body(request: web.Request) -> dict[str, object]:
    return await read_json_object(
        request, limit=request.app[SETTINGS].max_request_body, allow_empty=True
    )


@routes.post("/admin/orgs")
async def create_org(request: web.Request) -> web.Response:
    """``{name}`` → ``{id, name}``."""
    await authenticate_admin(request)
    org = await request.app[ADMIN_SERVICE].create_org(await _body(request))
    return web.json_response(created_org_view(org), status=201)


@routes.post("/admin/orgs/{orgId}/keys")
async def create_key(request: web.Request) -> web.Response:
    """A new ingest key, shown once."""
    await authenticate_admin(request)
    org_id = path_uuid(request, "orgId", "Organisation")
    await _body(request)
    key = await request.app[ADMIN_SERVICE].create_ingest_key(org_id)
    return web.json_response(created_ingest_key_view(key), status=201)


@routes.delete("/admin/orgs/{orgId}/keys/{keyId}")
async def revoke_key(request: web.Request) -> web.Response:
    """Revoke an ingest key: refused on every replica from now on."""
    await authenticate_admin(request)
    org_id = path_uuid(request, "orgId", "Organisation")
    key_id = path_uuid(request, "keyId", "Ingest key")
    await request.app[ADMIN_SERVICE].revoke_ingest_key(org_id, key_id)
    return web.Response(status=204)


@routes.post("/admin/orgs/{orgId}/users")
async def create_user(request: web.Request) -> web.Response:
    """``{email}`` → ``{id}``, a member of the organisation."""
    await authenticate_admin(request)
    org_id = path_uuid(request, "orgId", "Organisation")
    user_id = await request.app[ADMIN_SERVICE].create_user(org_id, await _body(request))
    return web.json_response(created_user_view(user_id), status=201)


@routes.post("/admin/orgs/{orgId}/agents")
async def create_agent(request: web.Request) -> web.Response:
    """A new agent, with its API key shown once."""
    await authenticate_admin(request)
    org_id = path_uuid(request, "orgId", "Organisation")
    created = await request.app[ADMIN_SERVICE].create_agent(org_id, await _body(request))
    return web.json_response(created_agent_view(created), status=201)


@routes.patch("/admin/agents/{agentId}")
async def update_agent(request: web.Request) -> web.Response:
    """Change any of an agent's settings."""
    await authenticate_admin(request)
    agent_id = path_id(request, "agentId", "Agent")
    agent = await request.app[ADMIN_SERVICE].update_agent(agent_id, await _body(request))
    return web.json_response(agent_view(agent))


@routes.post("/admin/orgs/{orgId}/credentials")
async def create_credential(request: web.Request) -> web.Response:
    """``{name, type, data}`` → ``{id, name, type}``; the data is sealed at rest."""
    await authenticate_admin(request)
    org_id = path_uuid(request, "orgId", "Organisation")
    credential = await request.app[CREDENTIAL_SERVICE].create(org_id, await _body(request))
    return web.json_response(created_credential_view(credential), status=201)


@routes.post("/admin/agents/{agentId}/api-key")
async def rotate_agent_key(request: web.Request) -> web.Response:
    """A new API key for the agent, shown once; the old one is refused on every replica."""
    await authenticate_admin(request)
    agent_id = path_id(request, "agentId", "Agent")
    await _body(request)
    created = await request.app[ADMIN_SERVICE].rotate_agent_key(agent_id)
    return web.json_response(created_agent_view(created))


@routes.get("/admin/orgs/{orgId}/credentials")
async def list_credentials(request: web.Request) -> web.Response:
    """The organisation's credentials, never their data."""
    await authenticate_admin(request)
    org_id = path_uuid(request, "orgId", "Organisation")
    infos = await request.app[CREDENTIAL_SERVICE].list(org_id)
    return web.json_response([credential_info_view(info) for info in infos])


@routes.put("/admin/orgs/{orgId}/credentials/{credentialId}/data")
async def rotate_credential(request: web.Request) -> web.Response:
    """``{data}``: new data for the credential, same id."""
    await authenticate_admin(request)
    org_id = path_uuid(request, "orgId", "Organisation")
    credential_id = path_uuid(request, "credentialId", "Credential")
    info = await request.app[CREDENTIAL_SERVICE].rotate(org_id, credential_id, await _body(request))
    return web.json_response(credential_info_view(info))


@routes.delete("/admin/orgs/{orgId}/credentials/{credentialId}")
async def delete_credential(request: web.Request) -> web.Response:
    """Delete the credential (and every agent's grant of it)."""
    await authenticate_admin(request)
    org_id = path_uuid(request, "orgId", "Organisation")
    credential_id = path_uuid(request, "credentialId", "Credential")
    await request.app[CREDENTIAL_SERVICE].delete(org_id, credential_id)
    return web.Response(status=204)
