"""What real ``serve`` and ``consume`` processes write to their logs, at DEBUG level, after
traffic through every kind of route: JSON lines, access lines that name runs, and no secret."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from tests.support.polling import until
from tests.support.processes import Processes, wait_until_ready
from tests.support.runtimes import callbacks_answered
from tests.support.tokens import ADMIN, ADMIN_TOKEN, SECRET_KEY

N8N_HEADER_SECRET = "n8n-header-value-7f3a"
TRIGGER_DEV_KEY = "tr_dev_fake"  # what the fake Trigger.dev accepts
WRONG_TRIGGER_DEV_KEY = "tr_dev_wrong_9c1e"
URL_PASSWORD = "url-password-51d2"
FORGED_KEY = "igk_forged_key_0b77"


def access_routes(log: Path) -> set[str]:
    """The routes ``log`` has an access line for (a line still being written is skipped)."""
    routes = set()
    for text in log.read_text().splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if line.get("event") == "request":
            routes.add(line.get("route"))
    return routes


async def until_logged(log: Path, route: str, *, bound_s: float = 10.0) -> None:
    """Return once ``log`` holds an access line for ``route``; fail after ``bound_s``."""
    await until(
        lambda: route in access_routes(log),
        bound_s=bound_s,
        what=f"no access line for {route} in {log.name}",
    )


async def test_logs_are_json_name_runs_and_never_contain_a_secret(
    processes: Processes,
    env: dict[str, str],
    runtime: TestServer,
    trigger_dev: TestServer,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    env["LOG_LEVEL"] = "DEBUG"
    base = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
    env["PUBLIC_BASE_URL"] = base
    processes.start("serve", env=env, log=tmp_path / "serve.log")
    processes.start("consume", env=env, log=tmp_path / "consume.log")
    await wait_until_ready(http, base)

    async def call(method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with http.request(method, f"{base}{path}", **kwargs) as resp:
            body = await resp.read()
            is_json = resp.content_type == "application/json"
            return resp.status, json.loads(body) if is_json else body

    _, org = await call("POST", "/admin/orgs", json={"name": "Logs"}, headers=ADMIN)
    _, key = await call("POST", f"/admin/orgs/{org['id']}/keys", headers=ADMIN)
    auth = {"Authorization": f"Bearer {key['key']}"}

    async def agent(output_kind: str, runtime_config: dict[str, Any]) -> dict[str, Any]:
        status, created = await call(
            "POST",
            f"/admin/orgs/{org['id']}/agents",
            json={"name": "Logs", "output_kind": output_kind, "runtime": runtime_config},
            headers=ADMIN,
        )
        assert status == 201, created
        return dict(created)

    def n8n(path: str) -> dict[str, Any]:
        return {
            "kind": "n8n",
            "webhook_url": str(runtime.make_url(f"/webhook/{path}")),
            "headers": {"X-N8N-Auth": N8N_HEADER_SECRET},
        }

    def trigger_dev_task(secret: str) -> dict[str, Any]:
        return {
            "kind": "trigger.dev",
            "api_url": str(trigger_dev.make_url("")).rstrip("/"),
            "task_id": "report",
            "secret_key": secret,
        }

    download = await agent("file_download", n8n("report.csv"))
    failing = await agent("file_download", n8n("json-error"))
    unreachable = await agent(
        "file_download",
        {"kind": "n8n", "webhook_url": f"http://user:{URL_PASSWORD}@127.0.0.1:9/webhook/x"},
    )
    reporting = await agent("json", n8n("accepted?report_delay_ms=20"))
    held = await agent("json", n8n("accepted?report=0"))
    task = await agent("json", trigger_dev_task(TRIGGER_DEV_KEY))
    refused_task = await agent("json", trigger_dev_task(WRONG_TRIGGER_DEV_KEY))

    runs: dict[str, int] = {}
    status, _ = await call(
        "POST", f"/api/agents/{download['id']}/runs/trigger-and-download", headers=auth
    )
    assert status == 200
    status, body = await call(
        "POST", f"/api/agents/{failing['id']}/runs/trigger-and-download", headers=auth
    )
    assert status == 502
    runs["failed download"] = body["runId"]
    status, body = await call(
        "POST", f"/api/agents/{unreachable['id']}/runs/trigger-and-download", headers=auth
    )
    assert status == 500
    status, body = await call(
        "POST",
        f"/api/agents/{reporting['id']}/runs/trigger-and-wait",
        json={"timeoutMs": 10_000},
        headers={**auth, "X-Request-Id": "logs-wait-1"},
    )
    assert (status, body["status"]) == (200, "completed"), body
    runs["wait"] = body["runId"]
    status, body = await call(
        "POST",
        f"/api/agents/{held['id']}/runs/trigger",
        headers={**auth, "Idempotency-Key": "logs-key-1"},
    )
    assert status == 202
    runs["trigger"] = body["runId"]
    status, _ = await call(
        "POST",
        f"/api/runs/{runs['trigger']}/callback",
        json={"type": "waiting", "tokenId": "tok_1", "description": "approve?"},
        headers={"Authorization": f"Bearer {held['api_key']}"},
    )
    assert status == 202
    status, _ = await call(
        "POST", f"/api/agents/{held['id']}/runs/{runs['trigger']}/cancel", headers=auth
    )
    assert status == 200
    status, body = await call(
        "POST",
        f"/api/agents/{task['id']}/runs/trigger-and-wait",
        # A task that moves on its own, as a real one does: the realtime feed the trigger
        # opens reports its end (a fake run that moved only when polled would wait forever).
        json={"input": {"advance": "time"}, "timeoutMs": 10_000},
        headers=auth,
    )
    assert (status, body["status"]) == (200, "completed"), body
    status, _ = await call(
        "POST", f"/api/agents/{refused_task['id']}/runs/trigger-and-wait", headers=auth
    )
    assert status == 500
    for headers in (
        {"Authorization": f"Bearer {FORGED_KEY}"},
        {"Authorization": f"Basic {FORGED_KEY}"},
    ):
        status, _ = await call(
            "POST", f"/api/agents/{download['id']}/runs/trigger", headers=headers
        )
        assert status == 401
    status, _ = await call(
        "POST", "/admin/orgs", json={"name": "x"}, headers={"Authorization": f"Bearer {FORGED_KEY}"}
    )
    assert status == 401
    await call("GET", "/healthz")
    callbacks_sent = [sent["status"] for sent in await callbacks_answered(runtime, 3)]
    assert callbacks_sent == [202, 202, 202]
    # The access line is written once the response is out: wait for the last call's (bounded),
    # then give the consumer, which logs as it applies, a moment more.
    await until_logged(tmp_path / "serve.log", "/healthz")
    await asyncio.sleep(0.5)

    text = (tmp_path / "serve.log").read_text() + (tmp_path / "consume.log").read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    secrets = {
        "ingest key": key["key"],
        "admin token": ADMIN_TOKEN,
        "SECRET_KEY": SECRET_KEY,
        "a runtime header": N8N_HEADER_SECRET,
        "a Trigger.dev key": TRIGGER_DEV_KEY,
        "a wrong Trigger.dev key": WRONG_TRIGGER_DEV_KEY,
        "a password in a webhook URL": URL_PASSWORD,
        "a forged key": FORGED_KEY,
        **{f"agent API key {a['id']}": a["api_key"] for a in (download, reporting, held, task)},
    }
    for what, secret in secrets.items():
        assert secret not in text, f"{what} reached the logs"
    assert "bearer " not in text.lower()
    assert "authorization" not in text.lower()

    access = [line for line in lines if line.get("event") == "request"]
    by_route: dict[str, list[dict[str, Any]]] = {}
    for line in access:
        assert {"method", "route", "status", "duration_ms", "bytes", "request_id"} <= set(line)
        by_route.setdefault(line["route"], []).append(line)
    wait_line = next(line for line in access if line["request_id"] == "logs-wait-1")
    assert (wait_line["run_id"], wait_line["agent_id"]) == (runs["wait"], reporting["id"])
    for route in (
        "/api/agents/{agentId}/runs/trigger",
        "/api/runs/{runId}/callback",
        "/api/agents/{agentId}/runs/{runId}/cancel",
    ):
        ok = [line for line in by_route[route] if line["status"] < 300]
        assert any(line["run_id"] == runs["trigger"] for line in ok), route
    failed_download = [
        line
        for line in by_route["/api/agents/{agentId}/runs/trigger-and-download"]
        if line["status"] == 502
    ]
    assert failed_download[0]["run_id"] == runs["failed download"]
    assert by_route["/healthz"][0]["level"] == "debug"
