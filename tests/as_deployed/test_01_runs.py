"""Flow 1: a caller starts runs through the load balancer and gets their results: a file
streamed, a JSON result waited for, and results a workflow reports through callbacks."""

from __future__ import annotations

import hashlib

import aiohttp

from devkit.fakes.n8n import make_bytes
from tests.support.deployed_runs import get_run, wait_terminal
from tests.support.deployed_tree import Org, Tree

FILE_SIZE = 3 * 1024 * 1024


async def test_a_caller_downloads_the_file_a_run_produces(
    tree: Tree, org: Org, http: aiohttp.ClientSession
) -> None:
    agent = await org.agent(f"bytes?size={FILE_SIZE}", output_kind="file_download")
    async with http.post(
        f"{tree.front}/api/agents/{agent['id']}/runs/trigger-and-download",
        headers=org.auth,
        json={"input": {"topic": "Q3"}},
    ) as resp:
        body = await resp.read()
        assert resp.status == 200, body[:500]
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers["Content-Disposition"] == 'attachment; filename="data.bin"'
        assert resp.headers["Cache-Control"] == "no-store"
        run_id = int(resp.headers["X-Run-Id"])
    assert len(body) == FILE_SIZE
    assert hashlib.sha256(body).digest() == hashlib.sha256(make_bytes(FILE_SIZE)).digest()

    run = await wait_terminal(http, tree.front, org.auth, agent["id"], run_id)
    assert run["status"] == "completed", run
    assert run["output_data"] == {
        "kind": "file_download",
        "filename": "data.bin",
        "mimeType": "application/octet-stream",
        "sizeBytes": FILE_SIZE,
    }


async def test_a_caller_waits_for_a_json_result(
    tree: Tree, org: Org, http: aiohttp.ClientSession
) -> None:
    agent = await org.agent("json")
    result = {"summary": "Q3 went well", "outputs": 3}
    async with http.post(
        f"{tree.front}/api/agents/{agent['id']}/runs/trigger-and-wait",
        headers=org.auth,
        json={"input": {"result": result}},
    ) as resp:
        answer = await resp.json()
        assert resp.status == 200, answer
    assert answer["status"] == "completed", answer
    assert answer["output_data"] == result
    assert answer["outputs"] == 3
    assert (await get_run(http, tree.front, org.auth, agent["id"], answer["runId"]))[
        "status"
    ] == "completed"


async def test_a_workflow_that_calls_back_delivers_its_result_to_the_waiting_caller(
    tree: Tree, org: Org, http: aiohttp.ClientSession
) -> None:
    # n8n's "Respond: Immediately" webhook, then an HTTP Request node posting to callbackUrl
    # (the load balancer's address: PUBLIC_BASE_URL) with the agent API key.
    agent = await org.agent("immediate", runtime={"result_delivery": "callback"})
    async with http.post(
        f"{tree.front}/api/agents/{agent['id']}/runs/trigger-and-wait",
        headers=org.auth,
        json={"input": {"result": {"pages": 12}, "outputs": 12}},
    ) as resp:
        answer = await resp.json()
        assert resp.status == 200, answer
    assert answer["status"] == "completed", answer
    assert answer["output_data"] == {"pages": 12}
    assert answer["outputs"] == 12


async def test_a_runtime_reports_a_run_through_its_callback_url(
    tree: Tree, org: Org, http: aiohttp.ClientSession
) -> None:
    # The webhook only acknowledges (202, never reports): the runtime's code reports itself.
    agent = await org.agent("accepted?report=0")
    async with http.post(
        f"{tree.front}/api/agents/{agent['id']}/runs/trigger", headers=org.auth, json={}
    ) as resp:
        queued = await resp.json()
        assert resp.status == 202, queued
    run_id = queued["runId"]
    callback = f"{tree.front}/api/runs/{run_id}/callback"
    runtime_auth = {"Authorization": f"Bearer {agent['api_key']}"}
    # Until the gateway has invoked the runtime the run may still be queued; `started` is
    # accepted either way.
    for body in (
        {"type": "started"},
        {"type": "output", "output": {"progress": 50}},
        {"type": "output", "complete": True, "output": {"rows": 7}, "outputs": 7},
    ):
        async with http.post(callback, headers=runtime_auth, json=body) as resp:
            assert resp.status == 202, await resp.text()
    run = await wait_terminal(http, tree.front, org.auth, agent["id"], run_id)
    assert run["status"] == "completed", run
    assert run["output_data"] == {"rows": 7}
    assert run["outputs"] == 7
    # A second end is refused: the run has ended.
    async with http.post(
        callback, headers=runtime_auth, json={"type": "output", "complete": True, "output": {}}
    ) as resp:
        assert resp.status == 409, await resp.text()
