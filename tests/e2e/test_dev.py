"""``agent-gateway dev``: the newcomer's command, run twice on the same data folder."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import aiohttp
import pytest

from devkit.embedded import free_port, stop_process
from tests.support.execute import body_frames


def start_dev(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GATEWAY_PORT": str(port)}
    for name in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "ADMIN_TOKEN"):
        env.pop(name, None)
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "dev", "--data-dir", str(data_dir)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def try_reporting_lines(banner: str, ingest_key: str) -> None:
    """The credential, register and ingest lines of the banner, as printed."""
    auth = {"Authorization": f"Bearer {ingest_key}"}
    lines = {
        kind: re.search(
            rf"curl -sS -X POST (\S+/{kind}) [^\n]*(?:\\\n\s+)?-d '({{\"{first}[^']*)'", banner
        )
        for kind, first in (
            ("trigger-and-wait", 'input": {"credential_id'),
            ("register", "externalRunId"),
            ("ingest", "externalRunId"),
        )
    }
    async with aiohttp.ClientSession() as http:
        answers = {}
        for kind, line in lines.items():
            assert line is not None, (kind, banner)
            async with http.post(line[1], headers=auth, data=line[2]) as resp:
                answers[kind] = (resp.status, await resp.json())
    status, run = answers["trigger-and-wait"]
    assert (status, run["status"]) == (200, "completed"), run
    assert run["output_data"] == {"name": "Demo CRM", "type": "api_key", "fields": ["api_key"]}
    status, registered = answers["register"]
    assert status in (200, 201), registered
    assert registered["credentialsToken"].startswith("crt_")
    status, ingested = answers["ingest"]
    # The second start finds the demo's exec_001 already completed: the terminal guard holds.
    assert (status, ingested["status"]) in ((202, "completed"), (409, "completed")), ingested


def wait_for_banner(child: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "Stop with Ctrl-C." in text:
            return text
        assert child.poll() is None, text
        time.sleep(0.1)
    raise AssertionError(log.read_text(errors="replace"))


async def run_shell(line: str) -> bytes:
    """Run a banner line as a user pastes it into a shell; its output."""
    child = await asyncio.create_subprocess_exec(
        "bash", "-c", line, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode == 0, err
    return out


async def test_dev_prints_a_curl_line_that_downloads_and_keeps_its_data(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    keys = []
    for attempt in range(2):
        port = free_port()
        log = tmp_path / f"dev-{attempt}.log"
        child = start_dev(data_dir, port, log)
        try:
            banner = wait_for_banner(child, log)
            key = re.search(r"ingest key\s+(\S+)", banner)
            line = re.search(r"curl -sS -OJ -D - -X POST (\S+) ", banner)
            assert key is not None, banner
            assert line is not None, banner
            keys.append(key.group(1))
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    line.group(1),
                    headers={"Authorization": f"Bearer {key.group(1)}"},
                    json={"input": {"topic": "Q3 financial summary"}},
                ) as resp,
            ):
                assert resp.status == 200
                assert resp.headers["Content-Disposition"] == 'attachment; filename="report.csv"'
                assert b"Q3 financial summary" in await resp.read()
            # The trigger-and-wait lines: an n8n-like workflow, a Trigger.dev-like task and an
            # n8n workflow that answers at once and calls back.
            waits = re.findall(r"curl -sS -X POST (\S+/trigger-and-wait) ", banner)
            assert len(waits) == 4, banner
            async with aiohttp.ClientSession() as http:
                for url in waits[:3]:
                    async with http.post(
                        url,
                        headers={"Authorization": f"Bearer {key.group(1)}"},
                        json={"input": {"topic": "Q3 financial summary"}},
                    ) as resp:
                        run = await resp.json()
                        assert (resp.status, run["status"]) == (200, "completed"), run
                        assert run["output_data"]["echo"]["topic"] == "Q3 financial summary"
            await try_reporting_lines(banner, key.group(1))
            # The execute line, run as printed: frames stream, then done and the terminator.
            execute = re.search(r"^  (curl -sS -N -X POST \S+/execute .+)$", banner, re.M)
            assert execute is not None, banner
            streamed = await run_shell(execute.group(1))
            frames = body_frames(streamed.decode())
            assert frames[-1] == "[DONE]", frames
            assert json.loads(frames[0])["chunk"] == "One"
            done = json.loads(frames[-2])
            assert (done["event"], done["success"]) == ("done", True)
            answered = re.search(r"^  (curl -sS -X POST \S+/execute .+)$", banner, re.M)
            assert answered is not None, banner
            result = json.loads(await run_shell(answered.group(1)))
            assert result["success"] is True, result
            # The package line, with that job's id: the ZIP holds the file sent along.
            package = re.search(r"^  (curl -sS -X PUT \S+/download .+)$", banner, re.M)
            assert package is not None, banner
            line = package.group(1).replace("<runId>", str(result["runId"]))
            # The package is "pending" until the store has recorded the run's end (the consumer
            # applies it just after the answer); a caller asks again, as one typing would.
            ticket = json.loads(await run_shell(line))
            for _attempt in range(100):
                if ticket["status"] != "pending":
                    break
                await asyncio.sleep(0.1)
                ticket = json.loads(await run_shell(line))
            assert ticket["status"] == "ready", ticket
            async with aiohttp.ClientSession() as http, http.get(ticket["signed_url"]) as resp:
                archive = zipfile.ZipFile(io.BytesIO(await resp.read()))
            assert archive.read("inputs/hello.txt") == b"Hello, world!"
        finally:
            assert stop_process(child, sig=signal.SIGINT, timeout=30) == 0
    # The second start reused the first one's database: same demo organisation and key.
    assert keys[0] == keys[1]
    assert (data_dir / "postgres" / "PG_VERSION").exists()


def children_of(pid: int) -> set[int]:
    """The pids whose parent is ``pid``, from ``/proc``."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive_after(pids: set[int], seconds: float) -> set[int]:
    """The pids still running (zombies aside) after waiting up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        alive = {pid for pid in pids if (Path(f"/proc/{pid}/stat").exists() and not _zombie(pid))}
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads children from /proc")
async def test_a_dev_killed_with_sigkill_leaves_nothing_behind_and_starts_again(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    first = start_dev(data_dir, free_port(), tmp_path / "dev-0.log")
    try:
        wait_for_banner(first, tmp_path / "dev-0.log")
        # PostgreSQL, Redis and the store consumer.
        servers = children_of(first.pid)
    finally:
        # As a closed terminal or the OOM killer would: no chance to clean up.
        first.kill()
        first.wait()
    assert len(servers) >= 3, servers
    assert alive_after(servers, 30) == set()

    port = free_port()
    second = start_dev(data_dir, port, tmp_path / "dev-1.log")
    try:
        banner = wait_for_banner(second, tmp_path / "dev-1.log")
        key = re.search(r"ingest key\s+(\S+)", banner)
        wait = re.search(r"curl -sS -X POST (\S+/trigger-and-wait) ", banner)
        assert key is not None, banner
        assert wait is not None, banner
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                wait.group(1),
                headers={"Authorization": f"Bearer {key.group(1)}"},
                json={"input": {"topic": "after a kill"}},
            ) as resp,
        ):
            run = await resp.json()
            assert (resp.status, run["status"]) == (200, "completed"), run
    finally:
        assert stop_process(second, sig=signal.SIGINT, timeout=30) == 0
