"""Gateways served by :class:`GatewayServer` on real ports, as ``serve`` runs them, and a
census of what one holds open (tasks, connections, file descriptors)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from gateway.http.app_keys import HTTP_SESSION
from gateway.http.server import GatewayServer
from gateway.settings import Settings
from tests.support.tokens import ADMIN


@dataclass(frozen=True)
class Census:
    """What one gateway holds at a moment."""

    tasks: int
    upstream_in_use: int
    upstream_idle: int
    caller_connections: int
    fds: int
    # What the tasks are doing, for the message of a failed assertion.
    task_names: tuple[str, ...] = dataclasses.field(default=(), compare=False)


@dataclass
class Caller:
    """An organisation's ingest key, as a caller holds it."""

    org_id: str
    key: str

    @property
    def auth(self) -> dict[str, str]:
        """The Authorization header of this caller."""
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class Live:
    """A gateway served by :class:`GatewayServer` on a real port (as ``serve`` runs it)."""

    base: str
    app: web.Application
    server: GatewayServer
    settings: Settings
    http: aiohttp.ClientSession

    def url(self, path: str) -> str:
        """An absolute URL on this gateway."""
        return self.base + path

    async def caller(self, name: str = "Acme") -> Caller:
        """A new organisation and an ingest key for it."""
        async with self.http.post(self.url("/admin/orgs"), json={"name": name}, headers=ADMIN) as r:
            assert r.status == 201, await r.text()
            org_id = (await r.json())["id"]
        async with self.http.post(self.url(f"/admin/orgs/{org_id}/keys"), headers=ADMIN) as r:
            assert r.status == 201, await r.text()
            return Caller(org_id, (await r.json())["key"])

    async def agent(self, caller: Caller, webhook_url: str, **fields: Any) -> dict[str, Any]:
        """An eligible agent of ``caller``'s organisation on an n8n webhook."""
        body = {
            "name": "Resilience agent",
            "output_kind": "file_download",
            "runtime": {"kind": "n8n", "webhook_url": webhook_url},
            **fields,
        }
        async with self.http.post(
            self.url(f"/admin/orgs/{caller.org_id}/agents"), json=body, headers=ADMIN
        ) as r:
            assert r.status == 201, await r.text()
            agent: dict[str, Any] = await r.json()
            return agent

    async def run(self, caller: Caller, agent_id: int, run_id: int | str) -> dict[str, Any]:
        """The run as ``GET .../runs/{runId}`` shows it."""
        async with self.http.get(
            self.url(f"/api/agents/{agent_id}/runs/{run_id}"), headers=caller.auth
        ) as r:
            assert r.status == 200, await r.text()
            run: dict[str, Any] = await r.json()
            return run

    async def terminal_run(
        self, caller: Caller, agent_id: int, run_id: int | str, *, timeout: float = 15.0
    ) -> dict[str, Any]:
        """Poll the run until it has ended (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            run = await self.run(caller, agent_id, run_id)
            if run["status"] in {"completed", "failed", "cancelled"}:
                return run
            if loop.time() > deadline:
                raise AssertionError(f"run {run_id} still {run['status']} after {timeout} s")
            await asyncio.sleep(0.05)

    async def terminal_or(
        self, caller: Caller, agent_id: int, run_id: int | str, status: str
    ) -> dict[str, Any]:
        """Poll the run until it has ended or reached ``status`` (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15.0
        while True:
            run = await self.run(caller, agent_id, run_id)
            if run["status"] in {"completed", "failed", "cancelled", status}:
                return run
            if loop.time() > deadline:
                raise AssertionError(f"run {run_id} still {run['status']}")
            await asyncio.sleep(0.05)

    def census(self) -> Census:
        """Tasks of the loop, the runtime connections of the gateway's client, the callers'
        connections to its server, and this process's open file descriptors."""
        connector = self.app[HTTP_SESSION].connector
        assert connector is not None
        idle = sum(len(conns) for conns in connector._conns.values())
        server = self.server._runner.server
        tasks = [t for t in asyncio.all_tasks() if _counted(t)]
        return Census(
            tasks=len(tasks),
            task_names=tuple(sorted(repr(t.get_coro()) for t in tasks)),
            upstream_in_use=len(connector._acquired),
            upstream_idle=idle,
            caller_connections=0 if server is None else len(server.connections),
            fds=len(os.listdir("/proc/self/fd")),
        )

    async def settled(self, baseline: Census, *, timeout: float = 10.0) -> Census:
        """The census once the gateway let go of everything it took since ``baseline``
        (bounded): as many tasks, no runtime connection in use, no idle one more, no caller
        connection, and about as many file descriptors."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            now = self.census()
            if (
                now.tasks <= baseline.tasks
                and now.upstream_in_use == 0
                and now.upstream_idle <= baseline.upstream_idle
                and now.caller_connections == 0
                and now.fds <= baseline.fds + 2
            ) or loop.time() > deadline:
                return now
            await asyncio.sleep(0.05)


def _counted(task: asyncio.Task[Any]) -> bool:
    """Whether a census counts ``task``: not the misbehaving runtime's own, and not the
    moment-long sleep of a loop that ticks (the follower's ``wait_for(event.wait(), tick)``)."""
    if task.get_name().startswith("rogue-"):
        return False
    return getattr(task.get_coro(), "__qualname__", "") != "Event.wait"


LiveFactory = Callable[..., Awaitable[Live]]
