"""Flow 4: someone guesses keys from one address until the gateway refuses that address; a
caller on another address, behind the same load balancer, is still served.

Last of the session: 127.0.0.1 stays locked out of every keyed route for the window."""

from __future__ import annotations

import aiohttp

from tests.support.deployed import configmap
from tests.support.deployed_tree import Org, Tree


async def test_a_guessing_address_is_refused_and_its_neighbour_is_still_served(
    tree: Tree, org: Org, http: aiohttp.ClientSession
) -> None:
    agent = await org.agent("json")
    url = f"{tree.front}/api/agents/{agent['id']}/runs/trigger-and-wait"
    limit = int(configmap().get("AUTH_FAILURE_LIMIT", "20"))
    guesses = []
    for n in range(limit + 1):
        wrong = {"Authorization": f"Bearer igk_wrong_guess_{n:04d}"}
        async with http.post(url, headers=wrong, json={}) as resp:
            guesses.append(resp.status)
    # The guesser from 127.0.0.1 is refused once it has spent its attempts.
    assert guesses == [401] * limit + [429]

    # Another caller, from 127.0.0.2, through the same nginx, with the right key.
    local = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with (
        aiohttp.ClientSession(connector=local) as neighbour,
        neighbour.post(url, headers=org.auth, json={"input": {"result": {"served": True}}}) as resp,
    ):
        answer = await resp.text()
        assert resp.status != 429, answer
        assert resp.status == 200, answer
