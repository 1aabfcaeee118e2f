"""Running the console script's processes in end-to-end tests, and talking to them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from devkit.embedded import free_port, stop_process
from tests.support.backends import Backends
from tests.support.tokens import ADMIN, ADMIN_TOKEN, SECRET_KEY


class Processes:
    """Child processes of the test, stopped by their PIDs."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def start(
        self, *args: str, env: dict[str, str], log: Path, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``python -m gateway.cli ARGS``; ``cwd`` matters to ``-m``, which puts the
        working directory first on ``sys.path`` (before ``PYTHONPATH``)."""
        with open(log, "wb") as out:
            child = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", *args],
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        for child in self.children:
            stop_process(child, sig=signal.SIGKILL)


def process_env(backends: Backends, **extra: str) -> dict[str, str]:
    """The environment of a ``serve`` or ``consume`` child on free ports."""
    return {
        **os.environ,
        "DATABASE_URL": backends.database_url,
        "REDIS_URL": backends.redis_url,
        "REDIS_CLUSTER": "true" if backends.redis_cluster else "false",
        "SECRET_KEY": SECRET_KEY,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "GATEWAY_PORT": str(free_port()),
        "CONSUMER_PORT": str(free_port()),
        "DRAIN_PRE_STOP_S": "0",
        "DRAIN_TIMEOUT_S": "20",
        "DRAIN_IDLE_CLOSE_S": "0",
        # Refused keys from 127.0.0.1 must not add up to a lock-out across tests.
        "AUTH_FAILURE_LIMIT": "1000000",
        **extra,
    }


async def wait_until_ready(
    http: aiohttp.ClientSession, base: str, *, probe: str = "/readyz"
) -> None:
    """Poll ``probe`` until it answers 200 (bounded: a loaded machine starts slowly): a
    replica's ``/readyz``, or the store consumer's ``/healthz`` (its monitor starts once it
    handles SIGTERM)."""
    for _ in range(600):
        try:
            async with http.get(f"{base}{probe}") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{base}{probe} did not answer 200")


async def setup_agent(
    http: aiohttp.ClientSession, base: str, webhook: str, *, output_kind: str = "file_download"
) -> dict[str, Any]:
    """A new organisation, ingest key and agent: ``{id, auth, api_key}``."""
    async with http.post(f"{base}/admin/orgs", json={"name": "E2E"}, headers=ADMIN) as r:
        org = await r.json()
    async with http.post(f"{base}/admin/orgs/{org['id']}/keys", headers=ADMIN) as r:
        key = (await r.json())["key"]
    async with http.post(
        f"{base}/admin/orgs/{org['id']}/agents",
        headers=ADMIN,
        json={
            "name": "E2E",
            "output_kind": output_kind,
            "runtime": {"kind": "n8n", "webhook_url": webhook},
        },
    ) as r:
        agent = await r.json()
    return {
        "id": agent["id"],
        "auth": {"Authorization": f"Bearer {key}"},
        "api_key": agent["api_key"],
        "ingest_key": key,
    }
