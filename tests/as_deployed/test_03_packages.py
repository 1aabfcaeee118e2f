"""Flow 3: a caller asks for a job's download package (``/v0``) and gets a ZIP of it behind
a signed URL."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import aiohttp

from devkit.fakes.n8n import make_bytes
from tests.support.deployed_execute import execute, file_object, files_agent
from tests.support.deployed_tree import Org, Tree


async def package(
    http: aiohttp.ClientSession, tree: Tree, org: Org, agent_id: int, job_id: int
) -> zipfile.ZipFile:
    """PUT the job's download, then GET its signed URL with no credentials: the ZIP."""
    async with http.put(
        f"{tree.front}/v0/workflows/{agent_id}/jobs/{job_id}/download",
        headers={"Authorization": org.key},
    ) as resp:
        answer: dict[str, Any] = await resp.json()
        assert resp.status == 200, answer
    assert answer["status"] == "ready", answer
    assert answer["workflowId"] == str(agent_id)
    assert answer["signed_url"].startswith(f"{tree.front}/v0/packages/"), answer
    async with aiohttp.ClientSession() as anyone, anyone.get(answer["signed_url"]) as resp:
        body = await resp.read()
        assert resp.status == 200, body[:500]
        assert resp.headers["Content-Type"] == "application/zip"
        assert resp.headers["Content-Length"] == str(len(body))
        assert resp.headers["Content-Disposition"].startswith("attachment")
    return zipfile.ZipFile(io.BytesIO(body))


async def test_a_waited_for_job_comes_as_a_zip(
    tree: Tree, org: Org, http: aiohttp.ClientSession
) -> None:
    agent = await org.agent("json")
    async with http.post(
        f"{tree.front}/api/agents/{agent['id']}/runs/trigger-and-wait",
        headers=org.auth,
        json={"input": {"result": {"total": 42}}},
    ) as resp:
        answer = await resp.json()
        assert resp.status == 200, answer
    zipped = await package(http, tree, org, agent["id"], answer["runId"])
    assert {"manifest.json", "input.json", "output.json"} <= set(zipped.namelist())
    manifest = json.loads(zipped.read("manifest.json"))
    assert manifest["runId"] == answer["runId"]
    assert manifest["status"] == "completed"
    assert json.loads(zipped.read("output.json")) == {"total": 42}


async def test_an_executed_job_comes_as_a_zip_with_its_uploaded_file(
    tree: Tree, org: Org, http: aiohttp.ClientSession
) -> None:
    agent = await files_agent(org)
    content = make_bytes(256 * 1024, offset=7)
    status, answer, _ = await execute(
        http, org, agent, {"documents": [file_object("scan.png", content, "image/png")]}
    )
    assert status == 200, answer
    zipped = await package(http, tree, org, agent["id"], answer["runId"])
    assert zipped.read("inputs/scan.png") == content
    manifest = json.loads(zipped.read("manifest.json"))
    (asset,) = [a for a in manifest["assets"] if a["path"] == "inputs/scan.png"]
    assert (asset["role"], asset["stored"], asset["size"]) == ("input", True, len(content)), asset
