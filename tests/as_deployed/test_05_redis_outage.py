"""Flow 5: Redis goes away for 10 s. The replicas stay in the load balancer's rotation
(``/readyz`` 200: their readiness must not hang on a shared dependency, or every pod leaves
at once) and a caller's trigger-and-wait is still answered."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from tests.support.deployed_tree import Org, Tree

OUTAGE_S = 10.0


async def trigger_and_wait(
    http: aiohttp.ClientSession, tree: Tree, org: Org, agent: dict[str, Any]
) -> tuple[int, Any]:
    try:
        async with http.post(
            f"{tree.front}/api/agents/{agent['id']}/runs/trigger-and-wait",
            headers=org.auth,
            json={"input": {"result": {"during": "outage"}}},
            timeout=aiohttp.ClientTimeout(total=90),
        ) as resp:
            return resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, repr(exc)


async def test_replicas_stay_ready_and_answer_while_redis_is_down(
    tree: Tree, org: Org, http: aiohttp.ClientSession
) -> None:
    agent = await org.agent("json")
    readiness: dict[str, list[int]] = {tree.replica(i): [] for i in range(len(tree.serve_ports))}
    # Stopped by its PID and started again from this thread: the dev kit ties a server's life
    # to the thread that started it.
    tree.redis.stop()
    try:
        call = asyncio.create_task(trigger_and_wait(http, tree, org, agent))
        loop = asyncio.get_running_loop()
        end = loop.time() + OUTAGE_S
        while loop.time() < end:
            for replica, seen in readiness.items():
                try:
                    async with http.get(
                        f"{replica}/readyz", timeout=aiohttp.ClientTimeout(total=5)
                    ) as resp:
                        seen.append(resp.status)
                except (aiohttp.ClientError, TimeoutError):
                    seen.append(0)
            await asyncio.sleep(0.5)
        answered_during_outage = call.done()
    finally:
        # The same port and data folder: the replicas reconnect to it.
        tree.redis.start()
    status, body = await call
    for i in range(len(tree.serve_ports)):
        await asyncio.to_thread(tree.wait_serve_ready, i)

    # Every answer of every replica's /readyz while Redis was down, and the call's.
    observed = {replica: sorted(set(seen)) for replica, seen in readiness.items()}
    assert observed == {replica: [200] for replica in readiness}, (
        f"/readyz during the outage: {observed}; trigger-and-wait: {status} {body[:300]}"
    )
    assert answered_during_outage, "trigger-and-wait was not answered while Redis was down"
    assert status == 200, body
    assert json.loads(body)["status"] == "completed", body
