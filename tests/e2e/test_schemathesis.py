"""Schemathesis fuzzes every documented operation of a real gateway (real sockets, the
session's PostgreSQL and Redis, the fake runtime, a store consumer): no 5xx, and every
response matches the document's status codes, content types, headers and schemas."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer

from store.consumer import StoreConsumer
from tests.conftest import (
    ADMIN_TOKEN,
    GatewayFactory,
    Tenant,
    TenantFactory,
    first_invoked_run,
    json_agent,
    webhook,
)

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


def operation(path: str, method: str, *, auth: str | None = None, **params: Any) -> str:
    """One ``[[operations]]`` table: the auth header and real ids for one operation."""
    lines = ["[[operations]]", f"include-path = {json.dumps(path)}"]
    if auth is not None:
        lines.append(f"headers = {toml_value({'Authorization': f'Bearer {auth}'})}")
    if params:
        lines.append(f"parameters = {toml_value({f'path.{k}': v for k, v in params.items()})}")
    if path.endswith(("trigger-and-wait", "trigger-and-download")):
        # A caller may ask for a wait window of a few milliseconds; seed 002's answer to a
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
    client = await make_gateway(sync_rate_limit=10_000, trigger_rate_limit=10_000)
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
            operation("/admin/orgs/{orgId}/agents", "POST", auth=ADMIN_TOKEN, orgId=tenant.org_id),
            operation("/admin/agents/{agentId}", "PATCH", auth=ADMIN_TOKEN, agentId=patched["id"]),
            operation(
                "/v0/workflows/{workflow_id}/jobs/{job_id}/download",
                "PUT",
                auth=key,
                workflow_id=quick["id"],
                job_id=quick_run,
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
    # Every operation was reached with working credentials and real ids.
    assert "Tested: 16" in text, text
    # A package's signed URL is authenticated by its signature alone, which fuzzing cannot
    # forge: 403 is all that operation can get, and the only one allowed to say so.
    if "Authentication failed" in text:
        assert "Authentication failed: 1 operation returned only 401/403" in text, text
        assert "- GET /v0/packages/{package_id}.zip" in text, text
