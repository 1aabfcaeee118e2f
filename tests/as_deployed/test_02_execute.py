"""Flow 2: a caller sends a workflow a 20 MiB file (base64 in the JSON body) through the load
balancer; the runtime gets a signed URL for it, which any replica honours."""

from __future__ import annotations

import hashlib

import aiohttp

from devkit.fakes.n8n import make_bytes
from tests.support.deployed_execute import (
    execute,
    file_object,
    files_agent,
    on_replica,
    upstream_of,
)
from tests.support.deployed_runs import get_run
from tests.support.deployed_tree import Org, Tree

# MAX_FILE_BYTES, the largest file execute takes.
FILE_SIZE = 20 * 1024 * 1024


async def test_a_20_mib_file_reaches_the_workflow_and_any_replica_serves_it_back(
    tree: Tree, org: Org, http: aiohttp.ClientSession
) -> None:
    agent = await files_agent(org)
    content = make_bytes(FILE_SIZE)
    status, answer, request_id = await execute(
        http,
        org,
        agent,
        {"documents": [file_object("contract.pdf", content, "application/pdf")], "note": "Q3"},
    )
    assert status == 200, answer
    assert answer["success"] is True, answer

    run = await get_run(http, tree.front, org.auth, agent["id"], answer["runId"])
    assert run["status"] == "completed", run
    async with http.get(
        f"{tree.front}/api/agents/{agent['id']}/runs/{answer['runId']}?include=input",
        headers=org.auth,
    ) as resp:
        assert resp.status == 200, await resp.text()
        recorded = (await resp.json())["input"]
    (document,) = recorded["documents"]
    assert document["name"] == "contract.pdf"
    assert document["size"] == FILE_SIZE

    # The signed URL, fetched from the replica that did not take the execute.
    took = upstream_of(tree.nginx.access_log, request_id)
    others = [
        tree.replica(i) for i, port in enumerate(tree.serve_ports) if took != f"127.0.0.1:{port}"
    ]
    assert len(others) == 1, (took, tree.serve_ports)
    async with (
        aiohttp.ClientSession() as anyone,
        anyone.get(on_replica(document["url"], others[0])) as resp,
    ):
        body = await resp.read()
        assert resp.status == 200, body[:500]
        assert resp.headers["Content-Length"] == str(FILE_SIZE)
        assert resp.headers["Content-Disposition"].startswith("attachment")
    assert hashlib.sha256(body).digest() == hashlib.sha256(content).digest()
