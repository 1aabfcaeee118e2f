"""Flow 6: a file that takes longer to stream than its run's deadline (the wait window plus
the agent's ``running_timeout_ms``, after which the reaper fails a run still in flight)
still ends its run ``completed``, with the file's metadata, once the last byte is sent."""

from __future__ import annotations

import hashlib

import aiohttp

from devkit.fakes.n8n import make_bytes
from tests.support.deployed_runs import wait_terminal
from tests.support.deployed_tree import Org, Tree

CHUNK = 256 * 1024
# The fake runtime pauses 1 s after each 256 KiB: ~20 s of body, above the 2 s deadline plus
# the reaper's 15 s period, so a reaper pass falls within the body whatever the phase.
CHUNKS = 20
SIZE = CHUNKS * CHUNK


async def test_a_slow_download_outlasting_its_deadline_ends_completed(
    tree: Tree, org: Org, http: aiohttp.ClientSession
) -> None:
    agent = await org.agent(
        f"bytes?size={SIZE}&pace_ms=1000", output_kind="file_download", running_timeout_ms=1000
    )
    async with http.post(
        f"{tree.front}/api/agents/{agent['id']}/runs/trigger-and-download",
        headers=org.auth,
        # Window min(1000, running_timeout_ms 1000, HARD_CEILING_MS): deadline 2 s after start.
        json={"input": {"topic": "slow"}, "timeoutMs": 1000},
    ) as resp:
        body = await resp.read()
        assert resp.status == 200, body[:500]
        run_id = int(resp.headers["X-Run-Id"])
    assert hashlib.sha256(body).digest() == hashlib.sha256(make_bytes(SIZE)).digest()

    run = await wait_terminal(http, tree.front, org.auth, agent["id"], run_id)
    assert (run["status"], run["error"]) == ("completed", None), run
    assert run["output_data"] == {
        "kind": "file_download",
        "filename": "data.bin",
        "mimeType": "application/octet-stream",
        "sizeBytes": SIZE,
    }, run
