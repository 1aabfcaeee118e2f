"""Access lines name the run and agent of every run request; secrets never reach a log line."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from devkit.embedded import free_port
from gateway.http.app import create_app
from gateway.http.middleware.access_log import AccessLogger
from gateway.ops.log_config import redact_secrets
from gateway.settings import Settings
from store.consumer import StoreConsumer
from tests.support.runs import wait_url
from tests.support.runtimes import as_agent, first_invoked_run, json_agent, webhook
from tests.support.tenants import Tenant

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[Client]:
    """A replica with the production access logger (replaces conftest's ``gateway``)."""
    port = free_port()
    app = create_app(dataclasses.replace(settings, public_base_url=f"http://127.0.0.1:{port}"))
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server(access_log_class=AccessLogger)
    client = TestClient(server)
    await client.start_server()
    yield client
    await client.close()


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


async def access_line(logs: list[dict[str, Any]], route: str) -> dict[str, Any]:
    """The access line of the first request to ``route`` (written just after the response)."""
    for _ in range(100):
        for line in logs:
            if line.get("event") == "request" and line.get("route") == route:
                return line
        await asyncio.sleep(0.01)
    raise AssertionError(f"no access line for {route}")


async def test_trigger_wait_and_cancel_lines_carry_the_run_and_agent(
    tenant: Tenant,
    runtime: TestServer,
    consumer: StoreConsumer,
    logs: list[dict[str, Any]],
) -> None:
    quick = await json_agent(tenant, runtime, "json")
    slow = await json_agent(tenant, runtime, "accepted?report=0")

    waited = await tenant.client.post(
        wait_url(quick["id"]), headers={**tenant.auth, "X-Request-Id": "wait-1"}
    )
    triggered = await tenant.client.post(
        f"/api/agents/{slow['id']}/runs/trigger", headers=tenant.auth
    )
    run_id = (await triggered.json())["runId"]
    cancelled = await tenant.client.post(
        f"/api/agents/{slow['id']}/runs/{run_id}/cancel", headers=tenant.auth
    )

    wait_line = await access_line(logs, "/api/agents/{agentId}/runs/trigger-and-wait")
    assert waited.headers["X-Request-Id"] == "wait-1"
    assert wait_line["request_id"] == "wait-1"
    assert wait_line["run_id"] == (await waited.json())["runId"]
    assert wait_line["agent_id"] == quick["id"]
    assert wait_line["status"] == 200
    assert wait_line["method"] == "POST"
    assert wait_line["duration_ms"] >= 0
    assert wait_line["bytes"] > 0
    trigger_line = await access_line(logs, "/api/agents/{agentId}/runs/trigger")
    assert (trigger_line["run_id"], trigger_line["agent_id"]) == (run_id, slow["id"])
    assert trigger_line["status"] == 202
    assert len(trigger_line["request_id"]) == 32  # generated, and echoed
    assert triggered.headers["X-Request-Id"] == trigger_line["request_id"]
    cancel_line = await access_line(logs, "/api/agents/{agentId}/runs/{runId}/cancel")
    assert cancelled.status == 200
    assert (cancel_line["run_id"], cancel_line["agent_id"]) == (run_id, slow["id"])


async def test_a_callback_line_names_the_run_and_its_agent(
    tenant: Tenant, runtime: TestServer, logs: list[dict[str, Any]]
) -> None:
    agent = await json_agent(tenant, runtime, "accepted?report=0")
    await tenant.client.post(f"/api/agents/{agent['id']}/runs/trigger", headers=tenant.auth)
    run_id = await first_invoked_run(runtime)

    resp = await tenant.client.post(
        f"/api/runs/{run_id}/callback", json={"type": "started"}, headers=as_agent(agent)
    )

    line = await access_line(logs, "/api/runs/{runId}/callback")
    assert resp.status == 202
    assert (line["run_id"], line["agent_id"]) == (run_id, agent["id"])


async def test_a_failed_download_line_names_the_run_it_failed(
    tenant: Tenant, runtime: TestServer, logs: list[dict[str, Any]]
) -> None:
    agent = await tenant.create_agent(runtime=webhook(runtime, "json-error"))

    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger-and-download", headers=tenant.auth
    )

    line = await access_line(logs, "/api/agents/{agentId}/runs/trigger-and-download")
    assert resp.status == 502
    assert line["status"] == 502
    assert line["run_id"] == (await resp.json())["runId"]
    assert line["agent_id"] == agent["id"]


async def test_probe_lines_are_debug_and_request_ids_are_validated(
    gateway: Client, logs: list[dict[str, Any]]
) -> None:
    resp = await gateway.get("/healthz", headers={"X-Request-Id": "bad id with spaces"})

    line = await access_line(logs, "/healthz")
    assert line["log_level"] == "debug"
    assert line["request_id"] != "bad id with spaces"
    assert resp.headers["X-Request-Id"] == line["request_id"]


def test_secret_fields_and_secrets_in_text_are_redacted() -> None:
    event = {
        "event": "runtime_call",
        "Authorization": "Bearer igk_live_key",
        "runtime": {
            "kind": "trigger.dev",
            "secret_key": "tr_dev_abcdef",
            "headers": {"X-N8N-Auth": "shared-secret", "Authorization": "Basic dXNlcjpwYXNz"},
        },
        "credentials": {"data": {"password": "hunter2"}},
        "error": "POST failed: 401 for Bearer agk_9f8e7d with tr_prod_123 on "
        "postgresql://gateway:pg-pass@db:5432/gateway",
        "payload": [{"agentApiKey": "agk_xyz", "credentialsToken": "ct_1"}],
        "run_id": 7,
    }

    out = json.dumps(redact_secrets(None, "info", dict(event)))

    for secret in (
        "igk_live_key",
        "tr_dev_abcdef",
        "shared-secret",
        "dXNlcjpwYXNz",
        "hunter2",
        "agk_9f8e7d",
        "tr_prod_123",
        "pg-pass",
        "agk_xyz",
        "ct_1",
    ):
        assert secret not in out
    assert '"run_id": 7' in out
    assert "postgresql://gateway:[redacted]@db:5432/gateway" in out
    assert '"kind": "trigger.dev"' in out
