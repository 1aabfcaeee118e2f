"""Upgrading as an operator does it: ask the database what it lacks, migrate, then roll the
replicas, which refuse a schema behind their code and run, warned, on one ahead of it."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from store.migrate import migration_files
from tests.support.backends import Backends
from tests.support.databases import (
    migrate_all_but_last,
    migrate_as_a_newer_release,
    scratch_database,
)
from tests.support.processes import Processes, wait_until_ready

# Patience for a process to run to its end: a refusal takes a second, a loaded machine more.
_RUN_TO_END_S = 120

_NEWER = "9999_from_the_next_release.sql"


async def run_to_end(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run the console script to its end: ``(exit code, stdout, stderr)``."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(child.communicate(), _RUN_TO_END_S)
    except TimeoutError:
        child.kill()
        await child.wait()
        raise
    assert child.returncode is not None
    return child.returncode, out.decode(), err.decode()


@pytest.fixture
async def scratch_url(backends: Backends) -> AsyncIterator[str]:
    """A database of this test's own on the session's PostgreSQL."""
    async with scratch_database(backends.database_url) as url:
        yield url


async def test_migrate_status_of_an_up_to_date_database_lists_all_applied_and_exits_0(
    env: dict[str, str],
) -> None:
    code, out, _err = await run_to_end("migrate", "--status", env=env)

    assert code == 0
    assert json.loads(out) == {
        "applied": [name for name, _sql in migration_files()],
        "pending": [],
        "unknown": [],
    }


async def test_a_database_a_release_behind_is_named_by_status_then_migrated(
    env: dict[str, str], scratch_url: str
) -> None:
    missing = await migrate_all_but_last(scratch_url)
    env["DATABASE_URL"] = scratch_url

    code, out, _err = await run_to_end("migrate", "--status", env=env)
    assert code == 1
    status = json.loads(out)
    assert status["pending"] == [missing]
    assert missing not in status["applied"]
    assert status["unknown"] == []

    code, out, _err = await run_to_end("migrate", env=env)
    assert code == 0
    assert json.loads(out) == {"applied": [missing]}
    code, out, _err = await run_to_end("migrate", "--status", env=env)
    assert code == 0
    assert json.loads(out)["pending"] == []


@pytest.mark.parametrize("command", ["serve", "consume"])
async def test_a_process_refuses_a_database_a_release_behind_before_it_listens(
    command: str, env: dict[str, str], scratch_url: str, http: aiohttp.ClientSession
) -> None:
    """A rollout that skipped the migrate Job stops at once with what to do, instead of
    failing request by request on a column that is not there."""
    missing = await migrate_all_but_last(scratch_url)
    env["DATABASE_URL"] = scratch_url

    code, out, err = await run_to_end(command, env=env)

    assert code != 0
    assert "Traceback" not in err
    line = json.loads(err.strip().splitlines()[-1])
    assert (line["event"], line["command"], line["level"]) == ("start_failed", command, "error")
    assert line["error"] == (
        f"the database is missing migrations {missing}: run 'agent-gateway migrate' first"
    )
    assert "gateway_listening" not in out + err
    port = env["GATEWAY_PORT"] if command == "serve" else env["CONSUMER_PORT"]
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(f"http://127.0.0.1:{port}/healthz"):
            pass


async def test_a_gateway_rolled_back_onto_a_newer_schema_serves_and_warns(
    processes: Processes,
    env: dict[str, str],
    scratch_url: str,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """The next release's migrate Job ran, its rollout was rolled back: the expand/contract
    rule keeps that schema good for this code, which says so and serves."""
    await migrate_as_a_newer_release(scratch_url, _NEWER)
    env["DATABASE_URL"] = scratch_url
    log = tmp_path / "serve.log"

    processes.start("serve", env=env, log=log)
    await wait_until_ready(http, f"http://127.0.0.1:{env['GATEWAY_PORT']}")

    warnings = [line for line in log.read_text().splitlines() if "schema_newer_than_code" in line]
    assert len(warnings) == 1
    assert _NEWER in warnings[0]
    code, out, _err = await run_to_end("migrate", "--status", env=env)
    assert code == 0
    assert json.loads(out)["unknown"] == [_NEWER]
