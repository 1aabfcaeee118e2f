"""The drain, in process: what happens to a held wait whose runtime has not answered when the
drain timeout passes. (tests/e2e/test_drain.py drives a real process with real downloads.)"""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from devkit.embedded import free_port
from gateway.http import app as gateway_app
from gateway.http.app import create_app
from gateway.http.server import GatewayServer
from gateway.settings import Settings
from store.consumer import StoreConsumer
from tests.support.runtimes import first_invoked_run, webhook
from tests.support.tokens import ADMIN


async def test_a_held_wait_cut_by_the_drain_fails_its_run_with_the_reason(
    settings: Settings,
    runtime: TestServer,
    consumer: StoreConsumer,
    db: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The shutdown's bound on background work, shortened so the test does not wait it out.
    monkeypatch.setattr(gateway_app, "_BACKGROUND_DRAIN_S", 0.5)
    port = free_port()
    settings = dataclasses.replace(
        settings,
        port=port,
        public_base_url=f"http://127.0.0.1:{port}",
        drain_pre_stop_s=0,
        drain_timeout_s=0.5,
    )
    server = GatewayServer(create_app(settings), settings)
    await server.start()
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            org = await (
                await http.post(f"{base}/admin/orgs", json={"name": "D"}, headers=ADMIN)
            ).json()
            key = await (
                await http.post(f"{base}/admin/orgs/{org['id']}/keys", headers=ADMIN)
            ).json()
            agent = await (
                await http.post(
                    f"{base}/admin/orgs/{org['id']}/agents",
                    json={
                        "name": "slow",
                        "output_kind": "json",
                        "runtime": webhook(runtime, "json?delay_ms=60000"),
                    },
                    headers=ADMIN,
                )
            ).json()
            waiting = asyncio.create_task(
                http.post(
                    f"{base}/api/agents/{agent['id']}/runs/trigger-and-wait",
                    json={"timeoutMs": 120_000},
                    headers={"Authorization": f"Bearer {key['key']}"},
                )
            )
            run_id = await first_invoked_run(runtime)

            await server.drain()

            with pytest.raises(aiohttp.ClientConnectionError):
                await waiting
    finally:
        await server.close()

    for _ in range(200):
        row = await db.fetchrow("SELECT status, error FROM runs WHERE id = $1", run_id)
        if row["status"] == "failed":
            break
        await asyncio.sleep(0.05)
    assert row["status"] == "failed"
    assert row["error"] == "The gateway shut down before the runtime answered"
