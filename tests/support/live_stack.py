"""A whole gateway stack for the SDK suites of other languages.

``python -m tests.support.live_stack`` starts a real PostgreSQL and Redis (embedded, unless
``DATABASE_URL`` and ``REDIS_URL`` are set), migrates, and serves on free 127.0.0.1 ports: a
gateway, a strict gateway (one call per agent per hour on every rate-limited route, for the 429
rows), a brisk one (one call per agent per second: a 429 worth waiting for), a test front before
the main gateway (``tests.support.flaky_front``: faults and a hold limit, for the retry rows),
the store consumer and the fake n8n runtime. It creates two organisations with ingest
keys through the admin API, prints one JSON line (``baseUrl``, ``strictBaseUrl``,
``briskBaseUrl``, ``frontBaseUrl``, ``runtimeUrl``, ``adminToken``, ``orgId``, ``ingestKey``,
``strangerIngestKey``, and ``bytesSha256``: size -> digest of the fake runtime's ``bytes`` path)
and runs until its standard input closes; then everything stops, the databases last.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web

from devkit.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from devkit.fakes.n8n import create_fake_runtime, make_bytes
from gateway.http.app import create_app
from gateway.settings import Settings
from store.consumer import StoreConsumer
from store.migrate import migrate_url
from store.pool import create_pool
from tests.support.consumers import event_buffer
from tests.support.flaky_front import FlakyFront
from tests.support.tokens import ADMIN, ADMIN_TOKEN, SECRET_KEY

# The strict gateway's limits: the second call of a kind on one agent is a 429.
STRICT = {
    "sync_rate_limit": 1,
    "sync_rate_window_s": 3600,
    "trigger_rate_limit": 1,
    "trigger_rate_window_s": 3600,
    "report_rate_limit": 1,
    "report_rate_window_s": 3600,
}
# The brisk gateway's: the second call of a kind on one agent is a 429 asking for about 1 s.
BRISK = {
    "sync_rate_limit": 1,
    "sync_rate_window_s": 1,
    "trigger_rate_limit": 1,
    "trigger_rate_window_s": 1,
    "report_rate_limit": 1,
    "report_rate_window_s": 1,
}


@contextlib.asynccontextmanager
async def _site(app: web.Application, port: int | None = None) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    # A gateway is served on the port its settings name: its callback URLs point there.
    port = port or free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _org(http: aiohttp.ClientSession, base: str, name: str) -> tuple[str, str]:
    async with http.post(f"{base}/admin/orgs", json={"name": name}, headers=ADMIN) as r:
        assert r.status == 201, await r.text()
        org_id: str = (await r.json())["id"]
    async with http.post(f"{base}/admin/orgs/{org_id}/keys", headers=ADMIN) as r:
        assert r.status == 201, await r.text()
        key: str = (await r.json())["key"]
    return org_id, key


def _settings(database_url: str, redis_url: str, blobs: Path, port: int) -> Settings:
    return Settings(
        blob_dir=str(blobs),
        database_url=database_url,
        redis_url=redis_url,
        admin_token=ADMIN_TOKEN,
        secret_key=SECRET_KEY,
        events_stream=f"sdk:events:{uuid.uuid4().hex}",
        public_base_url=f"http://127.0.0.1:{port}",
        stream_idle_timeout_s=5.0,
        drain_timeout_s=5.0,
        auth_failure_limit=1_000_000,
        port=port,
    )


# The sizes of the fake runtime's ``bytes`` path whose digests the JSON line carries, so a
# suite in another language can check a download byte for byte.
DIGEST_SIZES = (100 * 1024 * 1024,)


def _bytes_digests() -> dict[str, str]:
    digests = {}
    for size in DIGEST_SIZES:
        digest = hashlib.sha256()
        for offset in range(0, size, 4 * 1024 * 1024):
            digest.update(make_bytes(min(4 * 1024 * 1024, size - offset), offset))
        digests[str(size)] = digest.hexdigest()
    return digests


async def _until_stdin_closes() -> None:
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.buffer.read, 65536):
        pass


async def serve(database_url: str, redis_url: str, root: Path) -> None:
    """Migrate, serve everything, print the JSON line, stop when stdin closes."""
    await migrate_url(database_url)
    main_port, strict_port, brisk_port = free_port(), free_port(), free_port()
    settings = _settings(database_url, redis_url, root / "blobs", main_port)
    strict = dataclasses.replace(
        settings,
        port=strict_port,
        public_base_url=f"http://127.0.0.1:{strict_port}",
        **STRICT,  # type: ignore[arg-type]
    )
    brisk = dataclasses.replace(
        settings,
        port=brisk_port,
        public_base_url=f"http://127.0.0.1:{brisk_port}",
        **BRISK,  # type: ignore[arg-type]
    )
    redis = aioredis.Redis.from_url(redis_url)
    pool = await create_pool(database_url, min_size=1, max_size=4)
    consumer = StoreConsumer(redis, pool, buffer=event_buffer(settings, redis), poll_ms=100)
    consuming = asyncio.create_task(consumer.run())
    try:
        async with (
            _site(create_fake_runtime()) as runtime_url,
            _site(create_app(settings), main_port) as base,
            _site(create_app(strict), strict_port) as strict_base,
            _site(create_app(brisk), brisk_port) as brisk_base,
            _site(FlakyFront(base).app()) as front_base,
            aiohttp.ClientSession() as http,
        ):
            org_id, key = await _org(http, base, "SDK tests")
            _, stranger_key = await _org(http, base, "Globex")
            line = {
                "baseUrl": base,
                "strictBaseUrl": strict_base,
                "briskBaseUrl": brisk_base,
                "frontBaseUrl": front_base,
                "runtimeUrl": runtime_url,
                "adminToken": ADMIN_TOKEN,
                "orgId": org_id,
                "ingestKey": key,
                "strangerIngestKey": stranger_key,
            }
            print(json.dumps({**line, "bytesSha256": _bytes_digests()}), flush=True)
            await _until_stdin_closes()
    finally:
        consumer.stop()
        await asyncio.wait_for(consuming, 10)
        await pool.close()
        await redis.aclose()


def main() -> None:
    """Start the databases (unless given), serve, and stop them last."""
    database_url = os.environ.get("DATABASE_URL", "")
    redis_url = os.environ.get("REDIS_URL", "")
    with tempfile.TemporaryDirectory(prefix="sdk-stack-") as tmp:
        root = Path(tmp)
        started: list[EmbeddedPostgres | EmbeddedRedis] = []
        try:
            if not database_url:
                pg = EmbeddedPostgres(root / "postgres", durable=False)
                started.append(pg)
                database_url = pg.start()
            if not redis_url:
                rd = EmbeddedRedis(root / "redis")
                started.append(rd)
                redis_url = rd.start()
            asyncio.run(serve(database_url, redis_url, root))
        finally:
            for server in reversed(started):
                server.stop()


if __name__ == "__main__":
    main()
