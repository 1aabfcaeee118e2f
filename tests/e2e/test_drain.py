"""SIGTERM drains a real ``serve`` process: not ready at once, new connections refused after
the pre-stop delay, a download that ends in time ends whole, one that does not is cut at the
drain timeout with its run failed and the reason recorded, and the process exits 0."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import time
from pathlib import Path

import aiohttp
import asyncpg
from aiohttp.test_utils import TestServer

from devkit.fakes.n8n import make_bytes
from tests.support.processes import Processes, setup_agent, wait_until_ready

MB = 1024 * 1024
PRE_STOP_S = 1.5
DRAIN_TIMEOUT_S = 4.0


async def run_row(db: asyncpg.Pool, run_id: str, *, until: set[str]) -> asyncpg.Record:
    """The run's row once its status is one of ``until`` (bounded)."""
    for _ in range(300):
        row = await db.fetchrow(
            "SELECT status, error, output_data FROM runs WHERE id = $1", int(run_id)
        )
        if row is not None and row["status"] in until:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} never reached {until}: {row}")


async def test_sigterm_drains_finishes_what_it_can_cuts_the_rest_and_exits_zero(
    processes: Processes,
    env: dict[str, str],
    runtime: TestServer,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    env.update(DRAIN_PRE_STOP_S=str(PRE_STOP_S), DRAIN_TIMEOUT_S=str(DRAIN_TIMEOUT_S))
    base = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
    gateway = processes.start("serve", env=env, log=tmp_path / "serve.log")
    processes.start("consume", env=env, log=tmp_path / "consume.log")
    await wait_until_ready(http, base)
    # 2 MiB at 256 KiB every 100 ms: under a second. 64 MiB at that pace: about 25 s.
    short = await setup_agent(
        http, base, str(runtime.make_url(f"/webhook/bytes?size={2 * MB}&pace_ms=100"))
    )
    long = await setup_agent(
        http, base, str(runtime.make_url(f"/webhook/bytes?size={64 * MB}&pace_ms=100"))
    )

    short_resp = await http.post(
        f"{base}/api/agents/{short['id']}/runs/trigger-and-download", headers=short["auth"]
    )
    long_resp = await http.post(
        f"{base}/api/agents/{long['id']}/runs/trigger-and-download", headers=long["auth"]
    )
    assert (short_resp.status, long_resp.status) == (200, 200)
    short_first = await short_resp.content.readexactly(1024)
    await long_resp.content.readexactly(1024)

    gateway.send_signal(signal.SIGTERM)
    signalled = time.monotonic()

    # Still taking connections during the pre-stop delay, but no longer ready (once the signal
    # reached the process: a probe sent at the same moment may be answered before it).
    readiness: list[int] = []
    while time.monotonic() - signalled < PRE_STOP_S and 503 not in readiness:
        async with http.get(f"{base}/readyz") as ready:
            readiness.append(ready.status)
            body = await ready.json()
    assert readiness[-1] == 503, readiness
    assert body["checks"]["process"] == "draining"
    async with http.get(f"{base}/healthz") as live:
        assert live.status == 200

    async def read_long() -> tuple[int, BaseException | None]:
        received = 1024
        try:
            async for chunk in long_resp.content.iter_any():
                received += len(chunk)
        except aiohttp.ClientPayloadError as exc:
            return received, exc
        return received, None

    reading_long = asyncio.create_task(read_long())
    short_rest = await short_resp.read()

    # After the pre-stop delay, new connections are refused while the long one still runs.
    refused_at = None
    for _ in range(200):
        try:
            async with aiohttp.ClientSession() as fresh, fresh.get(f"{base}/healthz"):
                pass
        except aiohttp.ClientConnectionError:
            refused_at = time.monotonic()
            break
        await asyncio.sleep(0.05)
    assert refused_at is not None, "the listening socket stayed open"
    assert refused_at - signalled >= PRE_STOP_S - 0.1
    assert gateway.poll() is None, "the process should still be draining the long download"
    assert not reading_long.done()

    received, cut = await asyncio.wait_for(reading_long, 30)
    # A response cut mid-body keeps its connection until closed; left to the garbage collector
    # it warns ("Unclosed connection") in whichever test runs next.
    long_resp.close()
    cut_after = time.monotonic() - signalled
    exit_code = await asyncio.to_thread(gateway.wait, 30)

    assert exit_code == 0
    short_body = short_first + short_rest
    assert hashlib.sha256(short_body).digest() == hashlib.sha256(make_bytes(2 * MB)).digest()
    assert isinstance(cut, aiohttp.ClientPayloadError), "the cut file must not look whole"
    assert received < 64 * MB
    assert cut_after >= PRE_STOP_S + DRAIN_TIMEOUT_S - 0.1

    short_run = await run_row(db, short_resp.headers["X-Run-Id"], until={"completed", "failed"})
    long_run = await run_row(db, long_resp.headers["X-Run-Id"], until={"completed", "failed"})
    assert short_run["status"] == "completed"
    assert short_run["output_data"]["sizeBytes"] == 2 * MB
    assert long_run["status"] == "failed"
    assert "Gateway shut down mid-stream" in long_run["error"]
    assert "drain timeout" in long_run["error"]

    events = [
        json.loads(line)["event"]
        for line in (tmp_path / "serve.log").read_text().splitlines()
        if line.startswith("{")
    ]
    for step in (
        "drain_started",
        "drain_stopped_listening",
        "drain_timeout_cancelling",
        "drain_finished",
    ):
        assert step in events
