"""The console script as operators run it: ``serve`` and ``consume`` as real processes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from devkit.embedded import free_port, stop_process
from devkit.fakes.n8n import make_bytes
from tests.support.console import failure_line, run_console
from tests.support.processes import Processes, setup_agent, wait_until_ready
from tests.support.tokens import SECRET_KEY

MB = 1024 * 1024


async def test_serve_and_consume_processes_stream_a_file_and_record_the_run(
    processes: Processes,
    env: dict[str, str],
    runtime: TestServer,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    base = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
    env["STREAM_READ_BUFFER"] = "65536"
    processes.start("serve", env=env, log=tmp_path / "serve.log")
    consumer = processes.start("consume", env=env, log=tmp_path / "consume.log")
    await wait_until_ready(http, base)
    # The gateway records the download's end itself: the run can be completed before the
    # consumer is even up, and a SIGTERM before it handles one kills it instead.
    await wait_until_ready(http, f"http://127.0.0.1:{env['CONSUMER_PORT']}", probe="/healthz")
    agent = await setup_agent(
        http, base, str(runtime.make_url(f"/webhook/bytes?size={5 * MB}&outputs=1"))
    )

    async with http.post(
        f"{base}/api/agents/{agent['id']}/runs/trigger-and-download", headers=agent["auth"]
    ) as resp:
        assert resp.status == 200
        body = await resp.read()
        run_id = resp.headers["X-Run-Id"]
    assert hashlib.sha256(body).digest() == hashlib.sha256(make_bytes(5 * MB)).digest()

    run: dict[str, Any] = {}
    for _ in range(200):
        async with http.get(
            f"{base}/api/agents/{agent['id']}/runs/{run_id}", headers=agent["auth"]
        ) as resp:
            run = await resp.json()
        if run["status"] == "completed":
            break
        await asyncio.sleep(0.05)
    assert run["status"] == "completed"
    assert run["output_data"]["sizeBytes"] == 5 * MB

    assert stop_process(consumer) == 0
    log = (tmp_path / "serve.log").read_text()
    assert SECRET_KEY not in log
    assert agent["auth"]["Authorization"].split()[1] not in log


async def test_sigterm_lets_a_download_in_flight_finish_then_exits_cleanly(
    processes: Processes,
    env: dict[str, str],
    runtime: TestServer,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    base = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
    gateway = processes.start("serve", env=env, log=tmp_path / "serve.log")
    await wait_until_ready(http, base)
    # 8 MiB at 256 KiB every 50 ms: about 1.6 s of streaming.
    agent = await setup_agent(
        http, base, str(runtime.make_url(f"/webhook/bytes?size={8 * MB}&pace_ms=50"))
    )

    async with http.post(
        f"{base}/api/agents/{agent['id']}/runs/trigger-and-download", headers=agent["auth"]
    ) as resp:
        assert resp.status == 200
        first = await resp.content.readexactly(MB)
        gateway.send_signal(signal.SIGTERM)
        rest = await resp.read()

    assert len(first) + len(rest) == 8 * MB
    assert await asyncio.to_thread(gateway.wait, 30) == 0
    with pytest.raises(aiohttp.ClientConnectionError):
        await http.get(f"{base}/healthz")


def _nothing_listening() -> str:
    return f"postgresql://gateway:pw-never-logged@127.0.0.1:{free_port()}/gateway"


@pytest.mark.parametrize("command", ["serve", "consume", "migrate"])
def test_a_process_that_cannot_reach_postgresql_at_start_says_so_in_one_json_line(
    command: str, env: dict[str, str]
) -> None:
    """What ``kubectl logs --previous`` shows of a crash-looping pod: one line that names the
    dependency, in the format the log pipeline already parses, not a traceback."""
    env["DATABASE_URL"] = _nothing_listening()

    line = failure_line(run_console(command, env=env))

    assert (line["event"], line["level"], line["command"]) == ("start_failed", "error", command)
    assert line["dependency"] == "PostgreSQL"
    assert "refused" in line["error"].lower()
    assert "pw-never-logged" not in json.dumps(line)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GATEWAY_PORT", "eighty"),
        ("REDIS_URL", "http://redis.internal:6379"),
        ("SECRET_KEY_FILE", "/no/such/secret"),
    ],
)
def test_a_bad_setting_stops_serve_with_one_json_line_naming_the_variable(
    variable: str, value: str, env: dict[str, str]
) -> None:
    env[variable] = value
    if variable == "SECRET_KEY_FILE":
        del env["SECRET_KEY"]

    line = failure_line(run_console("serve", env=env))

    assert (line["event"], line["level"], line["command"]) == ("start_failed", "error", "serve")
    assert variable in line["error"]


def test_a_missing_required_setting_is_named_in_the_json_line(env: dict[str, str]) -> None:
    del env["REDIS_URL"]

    line = failure_line(run_console("consume", env=env))

    assert line["event"] == "start_failed"
    assert line["error"].startswith("set REDIS_URL")
