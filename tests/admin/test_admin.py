"""The admin API and its console twin: what an operator uses to set agents up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support.backends import Backends
from tests.support.tenants import Tenant
from tests.support.tokens import ADMIN, SECRET_KEY

Client = TestClient[web.Request, web.Application]
N8N = {
    "kind": "n8n",
    "webhook_url": "https://n8n.internal/webhook/report",
    "headers": {"X-Auth": "s3cret"},
}


async def test_an_operator_sets_up_an_org_with_a_key_a_member_and_an_agent(
    gateway: Client,
) -> None:
    resp = await gateway.post("/admin/orgs", json={"name": "Acme"}, headers=ADMIN)
    assert resp.status == 201
    org = await resp.json()
    assert org["name"] == "Acme"
    uuid.UUID(org["id"])

    key = await (await gateway.post(f"/admin/orgs/{org['id']}/keys", headers=ADMIN)).json()
    assert key["key"].startswith("igk_")
    user = await (
        await gateway.post(
            f"/admin/orgs/{org['id']}/users", json={"email": "ana@example.com"}, headers=ADMIN
        )
    ).json()
    uuid.UUID(user["id"])

    resp = await gateway.post(
        f"/admin/orgs/{org['id']}/agents",
        headers=ADMIN,
        json={
            "name": "Reports",
            "managed_by": "platform",
            "status": "active",
            "allow_external_triggers": True,
            "output_kind": "file_download",
            "runtime": N8N,
            "default_input": {"locale": "en"},
            "input_format": None,
            "running_timeout_ms": 90000,
        },
    )
    assert resp.status == 201
    agent = await resp.json()
    assert agent["api_key"].startswith("agk_")
    assert agent["output_kind"] == "file_download"
    assert agent["running_timeout_ms"] == 90000
    assert agent["runtime"]["headers"] == "***"

    resp = await gateway.patch(
        f"/admin/agents/{agent['id']}",
        headers=ADMIN,
        json={"status": "paused", "allow_external_triggers": False},
    )
    assert resp.status == 200
    patched = await resp.json()
    assert (patched["status"], patched["allow_external_triggers"]) == ("paused", False)
    assert patched["name"] == "Reports"
    assert "api_key" not in patched


async def test_agent_defaults_follow_the_design(tenant: Tenant) -> None:
    agent = await tenant.create_agent(output_kind="json")
    assert agent["managed_by"] == "platform"
    assert agent["status"] == "active"
    assert agent["allow_external_triggers"] is True
    assert agent["default_input"] == {}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
async def test_the_admin_api_needs_the_admin_token(
    gateway: Client, headers: dict[str, str]
) -> None:
    resp = await gateway.post("/admin/orgs", json={"name": "x"}, headers=headers)
    assert resp.status == 401
    assert "admin token" in (await resp.json())["error"]


async def test_an_ingest_key_is_not_an_admin_token(tenant: Tenant) -> None:
    resp = await tenant.client.post("/admin/orgs", json={"name": "x"}, headers=tenant.auth)
    assert resp.status == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "a", "runtime": {"kind": "n8n"}}, "webhook_url"),
        ({"name": "a", "runtime": {"kind": "n8n", "webhook_url": "ftp://x"}}, "webhook_url"),
        ({"name": "a", "runtime": {"kind": "lambda"}}, "kind"),
        ({"name": "a", "runtime": {"kind": "trigger.dev", "api_url": "https://t.dev"}}, "task_id"),
        ({"name": "a", "runtime": N8N, "output_kind": "pdf"}, "output_kind"),
        ({"name": "a", "runtime": N8N, "running_timeout_ms": 0}, "running_timeout_ms"),
        (
            {"name": "a", "runtime": N8N, "allow_external_triggers": "yes"},
            "allow_external_triggers",
        ),
        ({"name": "a", "runtime": N8N, "default_input": [1]}, "default_input"),
        ({"name": "a", "runtime": N8N, "colour": "red"}, "colour"),
        ({"runtime": N8N}, "name"),
        ({"name": "a", "runtime": {**N8N, "result_delivery": "poll"}}, "result_delivery"),
        (
            {
                "name": "a",
                "runtime": {
                    "kind": "trigger.dev",
                    "api_url": "https://t.dev",
                    "task_id": "t",
                    "secret_key": "tr_x",
                    "result_delivery": "callback",
                },
            },
            "result_delivery",
        ),
    ],
)
async def test_a_bad_agent_is_a_400_naming_the_field(
    tenant: Tenant, body: dict[str, Any], field: str
) -> None:
    resp = await tenant.client.post(f"/admin/orgs/{tenant.org_id}/agents", json=body, headers=ADMIN)
    assert resp.status == 400
    error = await resp.json()
    assert error["error"] == "Invalid request body"
    assert field in json.dumps(error["details"])


async def test_an_operator_says_whether_the_workflow_answers_or_calls_back(
    tenant: Tenant,
) -> None:
    created = await tenant.create_agent(
        output_kind="json", runtime={**N8N, "result_delivery": "callback"}
    )
    assert created["runtime"]["result_delivery"] == "callback"

    resp = await tenant.client.patch(
        f"/admin/agents/{created['id']}",
        json={"runtime": {**N8N, "result_delivery": "response"}},
        headers=ADMIN,
    )

    assert resp.status == 200
    assert (await resp.json())["runtime"]["result_delivery"] == "response"


async def test_unknown_orgs_and_agents_are_404(gateway: Client) -> None:
    for path in (f"/admin/orgs/{uuid.uuid4()}/keys", "/admin/orgs/not-a-uuid/keys"):
        resp = await gateway.post(path, headers=ADMIN)
        assert resp.status == 404
    resp = await gateway.patch("/admin/agents/987654321", json={"status": "paused"}, headers=ADMIN)
    assert resp.status == 404


async def test_an_unknown_route_is_a_json_404_and_a_wrong_method_a_json_405(
    gateway: Client,
) -> None:
    resp = await gateway.get("/nope")
    assert resp.status == 404
    assert await resp.json() == {"error": "Not Found"}
    resp = await gateway.get("/admin/orgs")
    assert resp.status == 405
    assert "POST" in resp.headers["Allow"]


async def test_every_response_echoes_a_request_id(gateway: Client) -> None:
    resp = await gateway.get("/nope", headers={"X-Request-Id": "trace-123"})
    assert resp.headers["X-Request-Id"] == "trace-123"
    resp = await gateway.get("/nope", headers={"X-Request-Id": "bad id\twith tab"})
    assert resp.headers["X-Request-Id"] != "bad id\twith tab"
    assert len(resp.headers["X-Request-Id"]) == 32


def run_cli(backends: Backends, *args: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "DATABASE_URL": backends.database_url,
        "SECRET_KEY": SECRET_KEY,
        "LOG_LEVEL": "WARNING",
    }
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "admin", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_the_console_command_does_what_the_admin_api_does(backends: Backends) -> None:
    org = run_cli(backends, "create-org", "Console Co")
    key = run_cli(backends, "create-key", org["id"])
    user = run_cli(backends, "create-user", org["id"], "ops@example.com")
    agent = run_cli(
        backends,
        "create-agent",
        org["id"],
        json.dumps({"name": "Console agent", "output_kind": "file_download", "runtime": N8N}),
    )
    patched = run_cli(backends, "update-agent", str(agent["id"]), '{"status": "paused"}')
    credential = run_cli(
        backends,
        "create-credential",
        org["id"],
        json.dumps({"name": "CRM", "type": "api_key", "data": {"key": "s3cret"}}),
    )

    assert key["key"].startswith("igk_")
    uuid.UUID(user["id"])
    assert agent["api_key"].startswith("agk_")
    assert patched["status"] == "paused"
    assert (credential["name"], credential["type"]) == ("CRM", "api_key")
    assert "s3cret" not in json.dumps(credential)
