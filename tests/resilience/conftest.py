"""Fixtures for fault and abuse tests: gateways served as in production (each can take a
census of what it holds open: ``tests/support/live_gateways.py``), a misbehaving runtime, and
dedicated PostgreSQL and Redis servers that a test may stop and start again."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devkit.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from gateway.http.app import create_app
from gateway.http.server import GatewayServer
from gateway.settings import Settings
from store.migrate import migrate_url
from tests.resilience.rogue import RogueRuntime
from tests.support.live_gateways import Live, LiveFactory


@pytest.fixture
async def make_live(settings: Settings) -> AsyncIterator[LiveFactory]:
    """Start gateways as ``serve`` does (GatewayServer: handler cancellation, keep-alive and
    drain settings), each on its own port; closed at the end of the test."""
    servers: list[GatewayServer] = []
    # force_close: the callers' client keeps no connection, so a census sees only the ones a
    # test holds on purpose.
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))

    async def start(**overrides: Any) -> Live:
        port = free_port()
        overrides.setdefault("public_base_url", f"http://127.0.0.1:{port}")
        overrides.setdefault("drain_pre_stop_s", 0.0)
        live_settings = dataclasses.replace(settings, port=port, **overrides)
        app = create_app(live_settings)
        server = GatewayServer(app, live_settings)
        await server.start()
        servers.append(server)
        return Live(f"http://127.0.0.1:{port}", app, server, live_settings, http)

    yield start
    for server in servers:
        await server.close()
    await http.close()


@pytest.fixture
async def rogue() -> AsyncIterator[RogueRuntime]:
    """The misbehaving runtime on a loopback port."""
    runtime = RogueRuntime()
    await runtime.start()
    yield runtime
    await runtime.close()


@pytest.fixture
def dedicated_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own, which it may stop and start again (same port, same data);
    stopped by its PID at the end."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dedicated_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A migrated PostgreSQL of this test's own, which it may stop and start again; stopped by
    its PID at the end."""
    server = EmbeddedPostgres(tmp_path / "postgres", durable=False)
    try:
        asyncio.run(migrate_url(server.start()))
        yield server
    finally:
        server.stop()
