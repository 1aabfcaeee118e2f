"""Looking at a replica's key and agent cache, and changing rows behind its back."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.http.app_keys import LOOKUP_CACHE
from store.lookup_cache import LookupCache
from tests.support.backends import Backends
from tests.support.tokens import SECRET_KEY

Client = TestClient[web.Request, web.Application]


def cache_of(replica: Client) -> LookupCache:
    """The replica's key and agent cache."""
    return replica.app[LOOKUP_CACHE]


async def until_serving(replica: Client, *, serving: bool = True, bound_s: float = 10.0) -> None:
    """Wait (bounded) until the replica's cache listener is up (or, ``serving=False``, down)."""
    cache = cache_of(replica)
    for _ in range(int(bound_s / 0.02)):
        if cache.serving == serving:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the cache never became {'serving' if serving else 'bypassed'}")


async def change_unannounced(db: asyncpg.Pool, sql: str, *args: Any) -> None:
    """Run ``sql`` with the table triggers off (``session_replication_role = replica``), so that
    no replica hears of the change: an invalidation lost on purpose."""
    async with db.acquire() as conn:
        await conn.execute("SET session_replication_role = replica")
        try:
            await conn.execute(sql, *args)
        finally:
            await conn.execute("RESET session_replication_role")


async def admin_console(backends: Backends, *args: str) -> dict[str, Any]:
    """Run ``agent-gateway admin …`` in its own process (the event loop keeps serving)."""
    env = {
        **os.environ,
        "DATABASE_URL": backends.database_url,
        "SECRET_KEY": SECRET_KEY,
        "LOG_LEVEL": "WARNING",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "admin",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result
