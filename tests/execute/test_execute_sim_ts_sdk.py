"""Sim's own TypeScript SDK (``simstudio-ts-sdk`` 0.1.2) drives workflow execute unchanged,
under Node, against a gateway on a real port.

The SDK is installed with ``npm ci`` from the committed ``sim_ts/package-lock.json`` into a
temporary folder; ``sim_ts/drive.mjs`` calls it as a Sim user would and prints what it got.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from store.consumer import StoreConsumer
from tests.support.gateways import GatewayFactory
from tests.support.runtimes import json_agent, received
from tests.support.tenants import Tenant

SIM_TS = Path(__file__).parent / "sim_ts"
LIMIT = 3
NPM_TIMEOUT_S = 300
DRIVE_TIMEOUT_S = 120


@pytest.fixture(scope="session")
def sim_ts_sdk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``drive.mjs`` beside the SDK as ``npm ci`` installs it."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node 20 and npm are needed (apt-get install nodejs npm)")
    folder = tmp_path_factory.mktemp("sim_ts")
    for name in ("package.json", "package-lock.json", "drive.mjs"):
        shutil.copy(SIM_TS / name, folder / name)
    installed = subprocess.run(
        [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT_S,
        check=False,
    )
    if installed.returncode != 0:
        pytest.skip(f"npm ci could not install simstudio-ts-sdk: {installed.stderr[-2000:]}")
    return folder


async def drive(folder: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Run ``drive.mjs`` with ``config``; its JSON report."""
    node = shutil.which("node")
    assert node is not None
    proc = await asyncio.create_subprocess_exec(
        node,
        "drive.mjs",
        json.dumps(config),
        cwd=folder,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), DRIVE_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()
    report: dict[str, Any] = json.loads(out)
    return report


async def test_the_typescript_sdk_drives_execute_end_to_end(
    sim_ts_sdk: Path,
    tenant: Tenant,
    runtime: TestServer,
    consumer: StoreConsumer,
    make_gateway: GatewayFactory,
) -> None:
    tenant.client = await make_gateway(execute_rate_limit=LIMIT, execute_rate_window_s=3600)
    files_format = [{"name": "documents", "type": "files"}, {"name": "note", "type": "string"}]
    workflows = {
        "echo": await json_agent(tenant, runtime, "json"),
        "files": await json_agent(tenant, runtime, "json", input_format=files_format),
        "slow": await json_agent(tenant, runtime, "json?delay_ms=200"),
        "closed": await json_agent(tenant, runtime, "json", allow_external_triggers=False),
        "limited": await json_agent(tenant, runtime, "json"),
    }

    report = await drive(
        sim_ts_sdk,
        {
            "baseUrl": str(tenant.client.make_url("/")),
            "apiKey": tenant.ingest_key,
            "workflows": {name: str(agent["id"]) for name, agent in workflows.items()},
            "limit": LIMIT,
        },
    )

    # Execute, and the bucket it took from.
    result = report["execute"]["ok"]
    assert (result["success"], result["output"]) == (True, {"echo": {"message": "hello"}})
    info = report["rateLimitAfterExecute"]
    assert (info["limit"], info["remaining"]) == (LIMIT, LIMIT - 1)
    assert time.time() < info["reset"] <= time.time() + 3600 + 1

    # A File in the input arrives as a signed URL.
    assert report["fileExecute"]["ok"]["success"] is True
    [sent] = next(
        call["payload"]["documents"] for call in received(runtime) if "documents" in call["payload"]
    )
    assert (sent["name"], sent["type"], sent["size"]) == ("report.pdf", "application/pdf", 26)
    assert "/files/" in sent["url"]

    # Async execute, then the job to its end.
    accepted = report["asyncAccepted"]["ok"]
    assert set(accepted) == {"success", "taskId", "status", "createdAt", "links"}
    assert (accepted["success"], accepted["status"]) == (True, "queued")
    assert accepted["links"]["status"] == f"/api/jobs/{accepted['taskId']}"
    assert set(report["jobSeen"]) <= {"queued", "processing"}
    job = report["job"]
    assert (job["success"], job["taskId"], job["status"]) == (True, accepted["taskId"], "completed")
    assert job["output"] == {"echo": {"topic": "Q3"}}
    assert job["metadata"]["workflowId"] == str(workflows["slow"]["id"])

    # Workflow status and validate.
    status = report["status"]["ok"]
    assert (status["isDeployed"], status["needsRedeployment"]) == (True, False)
    assert status["deployedAt"].endswith("Z")
    assert (report["validateReady"], report["validateClosed"], report["validateUnknown"]) == (
        True,
        False,
        False,
    )

    # Usage limits: the fewest executions left in any of the organisation's workflows.
    usage = report["usage"]["ok"]
    assert usage["success"] is True
    assert usage["rateLimit"]["sync"]["limit"] == LIMIT
    assert usage["rateLimit"]["sync"]["remaining"] == LIMIT - 1
    assert usage["rateLimit"]["async"] == usage["rateLimit"]["sync"]
    assert usage["usage"]["plan"] == "gateway"

    # The errors, as SimStudioError with their status.
    assert report["badKey"]["error"]["status"] == 401
    assert report["badKey"]["error"]["message"] == (
        "Missing or invalid API key (send it in X-API-Key)"
    )
    assert report["unknownWorkflow"]["error"] == {
        "message": "Workflow not found",
        "code": None,
        "status": 404,
    }
    *allowed, refused = report["limitedRuns"]
    assert [run["ok"]["success"] for run in allowed] == [True] * LIMIT
    after = report["rateLimitAfter429"]
    assert (after["limit"], after["remaining"]) == (LIMIT, 0)
    assert 1000 <= after["retryAfter"] <= 3600 * 1000
    assert refused["error"] == {
        "message": f"Rate limit exceeded. Retry after {after['retryAfter']}ms",
        "code": "RATE_LIMIT_EXCEEDED",
        "status": 429,
    }
    assert report["retryGivesUp"]["error"]["code"] == "RATE_LIMIT_EXCEEDED"
