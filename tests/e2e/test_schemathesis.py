"""Schemathesis fuzzes every documented operation of a real gateway (real sockets, the
session's PostgreSQL and Redis, the fake runtime, a store consumer): no 5xx, and every
response matches the document's status codes, content types, headers and schemas."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.http.openapi import build_document
from store.consumer import StoreConsumer
from tests.support.execute import execute_url, stream_agent
from tests.support.gateways import GatewayFactory
from tests.support.runtimes import first_invoked_run, json_agent, received, webhook
from tests.support.tenants import Tenant, TenantFactory
from tests.support.tokens import ADMIN, ADMIN_TOKEN

# Per operation; the whole run stays well under a minute.
MAX_EXAMPLES = 10
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)


def toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
        )
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def operation(
    path: str,
    method: str,
    *,
    auth: str | None = None,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    **params: Any,
) -> str:
    """One ``[[operations]]`` table: the auth header(s) and real ids for one operation."""
    lines = ["[[operations]]", f"include-path = {json.dumps(path)}"]
    sent = dict(headers or {})
    if auth is not None:
        sent["Authorization"] = f"Bearer {auth}"
    if sent:
        lines.append(f"headers = {toml_value(sent)}")
    values = {f"path.{k}": v for k, v in params.items()}
    values.update({f"query.{k}": v for k, v in (query or {}).items()})
    if values:
        lines.append(f"parameters = {toml_value(values)}")
    if path.endswith(("trigger-and-wait", "trigger-and-download")):
        # A caller may ask for a wait window of a few milliseconds; trigger-and-wait's answer to a
        # runtime that is not done by then is a 504, and that is what the gateway must send.
        lines.append("[operations.checks.not_a_server_error]")
        lines.append('expected-statuses = ["2XX", "3XX", "4XX", "504"]')
    return "\n".join(lines) + "\n"


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    make_gateway: GatewayFactory,
    make_tenant: TenantFactory,
    runtime: TestServer,
    consumer: StoreConsumer,
    tmp_path: Path,
) -> None:
    client = await make_gateway(
        sync_rate_limit=10_000,
        trigger_rate_limit=10_000,
        report_rate_limit=10_000,
        execute_rate_limit=10_000,
    )
    tenant: Tenant = await make_tenant()
    tenant = Tenant(tenant.org_id, tenant.ingest_key, client)
    quick = await json_agent(tenant, runtime, "json")
    reporting = await json_agent(tenant, runtime, "accepted?report=0")
    download = await tenant.create_agent(runtime=webhook(runtime, "report.csv"))
    patched = await json_agent(tenant, runtime, "json")
    runs = []
    for _ in range(2):
        resp = await client.post(f"/api/agents/{reporting['id']}/runs/trigger", headers=tenant.auth)
        assert resp.status == 202
        runs.append((await resp.json())["runId"])
    await first_invoked_run(runtime)
    resp = await client.post(
        f"/api/agents/{quick['id']}/runs/trigger-and-wait", headers=tenant.auth
    )
    assert resp.status == 200
    quick_run = (await resp.json())["runId"]
    key = tenant.ingest_key
    # A run registered by its runtime holds a credentials token its agent's key may use.
    registered = await json_agent(tenant, runtime, "json")
    resp = await client.post(
        f"/api/agents/{registered['id']}/runs/register",
        json={"externalRunId": "schemathesis-run"},
        headers=tenant.auth,
    )
    assert resp.status == 201, await resp.text()
    credentials_token = (await resp.json())["credentialsToken"]
    credential_id = await tenant.create_credential(
        {"api_key": "sk-schemathesis"}, grant_to=registered
    )
    rotated_credential = await tenant.create_credential({"api_key": "sk-rotated"})
    deleted_credential = await tenant.create_credential({"api_key": "sk-deleted"})
    standalone = await tenant.create_agent(managed_by="standalone", output_kind="json")
    resp = await client.post(f"/admin/orgs/{tenant.org_id}/keys", headers=ADMIN)
    assert resp.status == 201, await resp.text()
    spare_key_id = (await resp.json())["id"]
    # A streaming workflow with typed fields; one execute stores a file behind a signed URL.
    workflow = await stream_agent(
        tenant,
        runtime,
        input_format=[
            {"name": "message", "type": "string"},
            {"name": "documents", "type": "files"},
        ],
    )
    resp = await client.post(
        execute_url(workflow["id"]),
        json={"message": "hi", "documents": [{"data": "data:text/plain;base64,aGk=", "name": "a"}]},
        headers={"X-API-Key": key},
    )
    assert resp.status == 200, await resp.text()
    executed = int(resp.headers["X-Run-Id"])
    await resp.read()
    execute_call = next(c for c in received(runtime) if "documents" in c["payload"])
    [stored] = execute_call["payload"]["documents"]
    signed = urlsplit(stored["url"])
    signed_query = {k: v[0] for k, v in parse_qs(signed.query).items()}
    config = "".join(
        [
            operation(
                "/api/agents/{agentId}/runs/trigger", "POST", auth=key, agentId=reporting["id"]
            ),
            operation(
                "/api/agents/{agentId}/runs/trigger-and-wait", "POST", auth=key, agentId=quick["id"]
            ),
            operation(
                "/api/agents/{agentId}/runs/trigger-and-download",
                "POST",
                auth=key,
                agentId=download["id"],
            ),
            operation(
                "/api/agents/{agentId}/runs/{runId}",
                "GET",
                auth=key,
                agentId=reporting["id"],
                runId=runs[0],
            ),
            operation(
                "/api/agents/{agentId}/runs/{runId}/cancel",
                "POST",
                auth=key,
                agentId=reporting["id"],
                runId=runs[1],
            ),
            operation(
                "/api/runs/{runId}/callback", "POST", auth=reporting["api_key"], runId=runs[0]
            ),
            operation("/admin/orgs", "POST", auth=ADMIN_TOKEN),
            operation("/admin/orgs/{orgId}/keys", "POST", auth=ADMIN_TOKEN, orgId=tenant.org_id),
            operation("/admin/orgs/{orgId}/users", "POST", auth=ADMIN_TOKEN, orgId=tenant.org_id),
            # A key of its own to revoke: the tenant's key must keep working for the others.
            operation(
                "/admin/orgs/{orgId}/keys/{keyId}",
                "DELETE",
                auth=ADMIN_TOKEN,
                orgId=tenant.org_id,
                keyId=spare_key_id,
            ),
            operation("/admin/orgs/{orgId}/agents", "POST", auth=ADMIN_TOKEN, orgId=tenant.org_id),
            operation("/admin/agents/{agentId}", "PATCH", auth=ADMIN_TOKEN, agentId=patched["id"]),
            operation(
                "/v0/workflows/{workflow_id}/jobs/{job_id}/download",
                "PUT",
                auth=key,
                workflow_id=quick["id"],
                job_id=quick_run,
            ),
            operation(
                "/api/agents/{agentId}/runs/register", "POST", auth=key, agentId=registered["id"]
            ),
            operation(
                "/api/agents/{agentId}/runs/ingest", "POST", auth=key, agentId=standalone["id"]
            ),
            operation(
                "/api/credentials/{credentialId}/resolve",
                "GET",
                auth=registered["api_key"],
                headers={"X-Credentials-Token": credentials_token},
                credentialId=credential_id,
            ),
            operation(
                "/admin/orgs/{orgId}/credentials", "POST", auth=ADMIN_TOKEN, orgId=tenant.org_id
            ),
            operation(
                "/admin/orgs/{orgId}/credentials", "GET", auth=ADMIN_TOKEN, orgId=tenant.org_id
            ),
            operation(
                "/admin/orgs/{orgId}/credentials/{credentialId}/data",
                "PUT",
                auth=ADMIN_TOKEN,
                orgId=tenant.org_id,
                credentialId=rotated_credential,
            ),
            operation(
                "/admin/orgs/{orgId}/credentials/{credentialId}",
                "DELETE",
                auth=ADMIN_TOKEN,
                orgId=tenant.org_id,
                credentialId=deleted_credential,
            ),
            operation(
                "/admin/agents/{agentId}/api-key", "POST", auth=ADMIN_TOKEN, agentId=patched["id"]
            ),
            operation(
                "/api/workflows/{workflowId}/execute",
                "POST",
                headers={"X-API-Key": key},
                workflowId=workflow["id"],
            ),
            operation(
                "/api/workflows/{workflowId}/status",
                "GET",
                headers={"X-API-Key": key},
                workflowId=workflow["id"],
            ),
            operation(
                "/api/workflows/{workflowId}/executions/{executionId}/stream",
                "GET",
                headers={"X-API-Key": key},
                workflowId=workflow["id"],
                executionId=executed,
            ),
            operation("/api/jobs/{taskId}", "GET", headers={"X-API-Key": key}, taskId=quick_run),
            operation("/api/users/me/usage-limits", "GET", headers={"X-API-Key": key}),
            operation(
                "/files/{key}",
                "GET",
                query=signed_query,
                key=signed.path.removeprefix("/files/"),
            ),
        ]
    )
    config_file = tmp_path / "schemathesis.toml"
    config_file.write_text(config)
    base = str(client.make_url("")).rstrip("/")

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config_file),
        "run",
        f"{base}/openapi.json",
        "--url",
        base,
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "20261123",
        # One worker: hypothesis parses lambda sources with ast, which is not thread-safe on
        # every CPython 3.11 release.
        "--workers",
        "1",
        "--phases",
        "coverage,fuzzing,stateful",
        "--request-timeout",
        "20",
        "--no-color",
        "--report-dir",
        str(tmp_path / "report"),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 240)
    text = output.decode(errors="replace")

    print(text)
    assert process.returncode == 0, text
    # Every operation was reached with working credentials and real ids: each one succeeded
    # at least once, as the gateway's own request counter shows. A package's signed URL is
    # authenticated by its signature alone, which fuzzing cannot forge: 403 is all that
    # operation can get, and the only one allowed to say so.
    assert "Tested: 32" in text, text
    if "Authentication failed" in text:
        assert "Authentication failed: 1 operation returned only 401/403" in text, text
        assert "- GET /v0/packages/{package_id}.zip" in text, text
    succeeded = await succeeded_operations(client)
    unreached = documented_operations(build_document()) - succeeded
    assert unreached <= {"GET /v0/packages/{package_id}.zip"}, unreached


async def succeeded_operations(client: TestClient[web.Request, web.Application]) -> set[str]:
    """``METHOD route`` of every route that answered a 2xx, from ``GET /metrics``."""
    metrics = await (await client.get("/metrics")).text()
    return {
        f"{sample.labels['method']} {sample.labels['route']}"
        for family in text_string_to_metric_families(metrics)
        if family.name == "agent_gateway_http_requests"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["status"].startswith("2")
    }


def documented_operations(document: dict[str, Any]) -> set[str]:
    return {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "post", "patch", "put", "delete"}
    }
