"""A rolling restart behind the shipped nginx: two ``serve`` replicas replaced one after the
other under steady trigger-and-wait and trigger-and-download load, and no caller notices."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from devkit.embedded import free_port
from devkit.fakes.n8n import make_bytes
from devkit.nginx import Nginx, nginx_binary
from tests.support.backends import Backends
from tests.support.processes import Processes, process_env, setup_agent, wait_until_ready

FILE_SIZE = 256 * 1024
WAIT_CALLERS = 6
DOWNLOAD_CALLERS = 2
# Short where the shipped defaults only add waiting; the idle close stays above nginx's
# upstream keepalive_timeout (4 s), which is the point.
DRAIN = {"DRAIN_PRE_STOP_S": "1", "DRAIN_TIMEOUT_S": "10", "DRAIN_IDLE_CLOSE_S": "5"}
# Steady load from one organisation: the per-agent limit is not what this test is about.
UNLIMITED = {"SYNC_RATE_LIMIT": "100000000"}


@dataclass
class Seen:
    """What the callers saw: every status, the run ids answered, the downloads' checks."""

    statuses: Counter[int] = field(default_factory=Counter)
    run_ids: list[int] = field(default_factory=list)
    broken_downloads: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def call_without_pause(
    http: aiohttp.ClientSession, url: str, auth: dict[str, str], seen: Seen, stop: asyncio.Event
) -> None:
    expected = hashlib.sha256(make_bytes(FILE_SIZE)).hexdigest()
    while not stop.is_set():
        try:
            async with http.post(url, headers=auth, json={"input": {"topic": "Q3"}}) as resp:
                body = await resp.read()
                seen.statuses[resp.status] += 1
                if resp.status != 200:
                    continue
                if not url.endswith("trigger-and-download"):
                    seen.run_ids.append(int(json.loads(body)["runId"]))
                    continue
                seen.run_ids.append(int(resp.headers["X-Run-Id"]))
                if len(body) != FILE_SIZE or hashlib.sha256(body).hexdigest() != expected:
                    seen.broken_downloads.append(f"{resp.headers['X-Run-Id']}: {len(body)} B")
        except aiohttp.ClientError as exc:
            seen.errors.append(repr(exc))


async def test_a_rolling_restart_of_both_replicas_fails_no_request(
    backends: Backends,
    runtime: TestServer,
    db: asyncpg.Pool,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (e.g. `apt-get install nginx`): no load balancer")
    processes = Processes()
    front_port = free_port()
    front = f"http://127.0.0.1:{front_port}"
    envs = [process_env(backends, PUBLIC_BASE_URL=front, **DRAIN, **UNLIMITED) for _ in ("a", "b")]
    replicas = [
        processes.start("serve", env=env, log=tmp_path / f"serve-{i}-0.log")
        for i, env in enumerate(envs)
    ]
    processes.start("consume", env=process_env(backends), log=tmp_path / "consume.log")
    nginx = Nginx(
        binary, tmp_path / "nginx", front_port, [f"127.0.0.1:{e['GATEWAY_PORT']}" for e in envs]
    )
    try:
        nginx.start()
        for env in envs:
            await wait_until_ready(http, f"http://127.0.0.1:{env['GATEWAY_PORT']}")
        await wait_until_ready(http, front)
        waiter = await setup_agent(
            http, front, str(runtime.make_url("/webhook/json")), output_kind="json"
        )
        file = await setup_agent(
            http, front, str(runtime.make_url(f"/webhook/bytes?size={FILE_SIZE}"))
        )

        seen, stop = Seen(), asyncio.Event()
        # Callers keep their own keep-alive connections to nginx, as services behind it do.
        async with aiohttp.ClientSession() as callers:
            load = [
                *(
                    call_without_pause(
                        callers,
                        f"{front}/api/agents/{waiter['id']}/runs/trigger-and-wait",
                        waiter["auth"],
                        seen,
                        stop,
                    )
                    for _ in range(WAIT_CALLERS)
                ),
                *(
                    call_without_pause(
                        callers,
                        f"{front}/api/agents/{file['id']}/runs/trigger-and-download",
                        file["auth"],
                        seen,
                        stop,
                    )
                    for _ in range(DOWNLOAD_CALLERS)
                ),
            ]
            running = asyncio.gather(*load)
            await asyncio.sleep(1)
            for i, env in enumerate(envs):
                # SIGTERM, wait for the exit, start the replacement on the same address, ready.
                replicas[i].send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(replicas[i].wait, 60) == 0
                replicas[i] = processes.start("serve", env=env, log=tmp_path / f"serve-{i}-1.log")
                await wait_until_ready(http, f"http://127.0.0.1:{env['GATEWAY_PORT']}")
                await asyncio.sleep(1)
            stop.set()
            await running

        # Nothing failed: every call was answered 200, every file arrived whole.
        assert seen.errors == []
        # A string, which pytest shows whole: the balancer's errors say which upstream failed.
        errors = (tmp_path / "nginx" / "error.log").read_text()
        failed_lines = "\n".join(line for line in errors.splitlines() if "[info]" not in line)
        assert dict(seen.statuses) == {200: sum(seen.statuses.values())}, (
            f"{dict(seen.statuses)}\n{failed_lines[-6000:]}"
        )
        assert seen.broken_downloads == []
        assert len(seen.run_ids) > 100
        # Every run ended once, and nginx sent no POST twice (one run per answer, no more).
        rows = await db.fetch(
            "SELECT id, status FROM runs WHERE agent_id = ANY($1::bigint[])",
            [waiter["id"], file["id"]],
        )
        assert sorted(r["id"] for r in rows) == sorted(seen.run_ids)
        assert {r["status"] for r in rows} == {"completed"}
        print(f"\nrolling restart: {dict(seen.statuses)} over {len(seen.run_ids)} runs")
    finally:
        nginx.stop()
        processes.stop_all()
