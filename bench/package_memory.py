"""The gateway's memory while it streams a 200 MB job package (the /v0 API), as printed figures.

Figures, never pass/fail; it stops with an error only when a result is wrong (a ZIP whose
entries differ from what was uploaded). Everything runs on 127.0.0.1:

1. an embedded PostgreSQL and Redis (``devkit.embedded``) in a temp dir, migrated; the store
   consumer (``agent-gateway consume``); the fake n8n runtime in this process;
2. gateway A (``agent-gateway serve``) takes one workflow execute carrying
   ``--files`` files of ``--file-mb`` MB each (10 x 20 MB: a 267 MB body), and is stopped;
3. gateway B, a fresh process on the same database and blob folder, so that what the upload
   cost is not counted: after a warm-up download of a tiny package, its VmRSS is read
   ("before"), its peak is reset (``/proc/<pid>/clear_refs``), the big package is downloaded
   ``--downloads`` times one after another, then ``--concurrent`` at once, and VmRSS is
   sampled every 5 ms while they run. The peak (VmHWM) and VmRSS after are read at the end.

The first download is saved to the temp dir and opened with ``zipfile``: every input must be
byte-identical to what was uploaded (SHA-256).

    .venv/bin/python bench/package_memory.py
    .venv/bin/python bench/package_memory.py --files 10 --file-mb 20 --downloads 3 --concurrent 4
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from devkit.embedded import EmbeddedPostgres, EmbeddedRedis, free_port, stop_process
from devkit.fakes.n8n import create_fake_runtime, make_bytes
from store.migrate import migrate_url

REPO_DIR = Path(__file__).resolve().parent.parent
MB = 1_000_000
MIB = 1024 * 1024
ADMIN_TOKEN = secrets.token_hex(16)


class BenchError(RuntimeError):
    """A part of the benchmark could not start, or a result came back wrong."""


@dataclass
class Child:
    """A child process of ours, stopped by its PID."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        stop_process(self.process, sig=signal.SIGTERM, timeout=15)


def spawn(name: str, argv: list[str], log: Path, env: dict[str, str]) -> Child:
    with open(log, "ab") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO_DIR,
            start_new_session=True,
        )
    return Child(name, process, log)


def wait_for_port(child: Child, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise BenchError(f"{child.name} exited:\n{child.log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{child.name} did not listen on {port}")


def command(*args: str) -> list[str]:
    script = Path(sys.executable).parent / "agent-gateway"
    return (
        [str(script), *args] if script.is_file() else [sys.executable, "-m", "gateway.cli", *args]
    )


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB."""
    found = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in {"VmRSS", "VmHWM"}:
                found[key] = int(value.split()[0])
    return found


def reset_peak(pid: int) -> None:
    """Reset the process's VmHWM to its current VmRSS (Linux ``clear_refs``, value 5)."""
    with open(f"/proc/{pid}/clear_refs", "w") as clear:
        clear.write("5")


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


async def admin(session: aiohttp.ClientSession, url: str, body: Any = None) -> dict[str, Any]:
    async with session.post(
        url, json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as resp:
        if resp.status != 201:
            raise BenchError(f"POST {url}: {resp.status} {await resp.text()}")
        answer: dict[str, Any] = await resp.json()
        return answer


def execute_body(files: dict[str, bytes]) -> bytes:
    documents = [
        {
            "type": "file",
            "data": "data:application/octet-stream;base64," + base64.b64encode(data).decode(),
            "name": name,
            "mime": "application/octet-stream",
        }
        for name, data in files.items()
    ]
    return json.dumps({"documents": documents, "result": {"files": len(files)}}).encode()


async def execute(
    session: aiohttp.ClientSession, base: str, key: str, agent: int, body: bytes
) -> int:
    async with session.post(
        f"{base}/api/workflows/{agent}/execute",
        headers={"X-API-Key": key, "Content-Type": "application/json"},
        data=io.BytesIO(body),
    ) as resp:
        answer = await resp.json()
        if resp.status != 200 or not answer.get("success"):
            raise BenchError(f"execute: {resp.status} {answer}")
        run_id: int = answer["runId"]
        return run_id


async def package_url(
    session: aiohttp.ClientSession, base: str, key: str, agent: int, run: int
) -> str:
    async with session.put(
        f"{base}/v0/workflows/{agent}/jobs/{run}/download", headers={"Authorization": key}
    ) as resp:
        ticket = await resp.json()
        if resp.status != 200 or ticket["status"] != "ready":
            raise BenchError(f"package: {resp.status} {ticket}")
        url: str = ticket["signed_url"]
        return url


async def download(
    session: aiohttp.ClientSession, url: str, save: Path | None
) -> tuple[int, float]:
    started = time.perf_counter()
    size = 0
    async with session.get(url) as resp:
        if resp.status != 200:
            raise BenchError(f"download: {resp.status} {await resp.text()}")
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(save.open("wb")) if save else None
            async for chunk in resp.content.iter_chunked(MIB):
                size += len(chunk)
                if out is not None:
                    out.write(chunk)
        if size != int(resp.headers["Content-Length"]):
            raise BenchError(
                f"download: {size} bytes, Content-Length {resp.headers['Content-Length']}"
            )
    return size, time.perf_counter() - started


def check_zip(path: Path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path) as zipped:
        names = [n for n in zipped.namelist() if n.startswith("inputs/")]
        if names != [f"inputs/{name}" for name in files]:
            raise BenchError(f"unexpected entries: {zipped.namelist()}")
        for name, data in files.items():
            digest = hashlib.sha256()
            with zipped.open(f"inputs/{name}") as entry:
                while block := entry.read(MIB):
                    digest.update(block)
            if digest.hexdigest() != hashlib.sha256(data).hexdigest():
                raise BenchError(f"inputs/{name} differs from what was uploaded")


class Sampler:
    """VmRSS of a process, sampled every 5 ms while a block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.max_kib = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.max_kib = max(self.max_kib, status_kib(self.pid)["VmRSS"])
            await asyncio.sleep(0.005)

    @contextlib.asynccontextmanager
    async def running(self) -> Any:
        self._task = asyncio.create_task(self._run())
        try:
            yield self
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@contextlib.contextmanager
def backends(root: Path) -> Iterator[tuple[str, str]]:
    postgres = EmbeddedPostgres(root / "postgres", durable=False)
    redis = EmbeddedRedis(root / "redis")
    try:
        database_url = postgres.start()
        redis_url = redis.start()
        asyncio.run(migrate_url(database_url))
        yield database_url, redis_url
    finally:
        redis.stop()
        postgres.stop()


async def bench(args: argparse.Namespace, root: Path, database_url: str, redis_url: str) -> None:
    runtime = web.AppRunner(create_fake_runtime(), access_log=None)
    await runtime.setup()
    runtime_port = free_port()
    await web.TCPSite(runtime, "127.0.0.1", runtime_port).start()
    env = {
        **{k: v for k, v in os.environ.items() if k != "PUBLIC_BASE_URL"},
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": secrets.token_hex(16),
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "GATEWAY_HOST": "127.0.0.1",
        "BLOB_DIR": str(root / "blobs"),
        "EXECUTE_MAX_REQUEST_BODY": str(args.files * args.file_mb * MB * 2),
        "SHUTDOWN_GRACE_S": "5",
        "LOG_LEVEL": "WARNING",
    }
    children: list[Child] = []
    files = {
        f"input-{i:02d}.bin": make_bytes(args.file_mb * MB, offset=i * 7919)
        for i in range(args.files)
    }
    timeout = aiohttp.ClientTimeout(total=None)
    try:
        children.append(spawn("consumer", command("consume"), root / "consumer.log", env))
        port_a = free_port()
        gateway_a = spawn(
            "gateway A",
            command("serve"),
            root / "gateway-a.log",
            env | {"GATEWAY_PORT": str(port_a)},
        )
        children.append(gateway_a)
        wait_for_port(gateway_a, port_a)
        base_a = f"http://127.0.0.1:{port_a}"
        async with aiohttp.ClientSession(timeout=timeout) as session:
            org = await admin(session, f"{base_a}/admin/orgs", {"name": "bench"})
            key = (await admin(session, f"{base_a}/admin/orgs/{org['id']}/keys"))["key"]
            agent = (
                await admin(
                    session,
                    f"{base_a}/admin/orgs/{org['id']}/agents",
                    {
                        "name": "Package bench",
                        "output_kind": "json",
                        "runtime": {
                            "kind": "n8n",
                            "webhook_url": f"http://127.0.0.1:{runtime_port}/webhook/json",
                        },
                        "input_format": [{"name": "documents", "type": "files"}],
                    },
                )
            )["id"]
            body = execute_body(files)
            started = time.perf_counter()
            big_run = await execute(session, base_a, key, agent, body)
            upload_s = time.perf_counter() - started
            del body
            small_run = await execute(
                session, base_a, key, agent, execute_body({"tiny.bin": b"x" * 1000})
            )
        upload_peak = status_kib(gateway_a.process.pid)["VmHWM"]
        gateway_a.stop()
        children.remove(gateway_a)
        print(
            f"upload: one execute with {args.files} x {args.file_mb} MB files in {upload_s:.1f} s "
            f"(gateway A's peak VmHWM {mib(upload_peak)} MiB; not part of the figures below)"
        )

        port_b = free_port()
        gateway_b = spawn(
            "gateway B",
            command("serve"),
            root / "gateway-b.log",
            env | {"GATEWAY_PORT": str(port_b)},
        )
        children.append(gateway_b)
        wait_for_port(gateway_b, port_b)
        pid = gateway_b.process.pid
        base_b = f"http://127.0.0.1:{port_b}"
        start = status_kib(pid)["VmRSS"]
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await download(session, await package_url(session, base_b, key, agent, small_run), None)
            url = await package_url(session, base_b, key, agent, big_run)
            before = status_kib(pid)["VmRSS"]
            reset_peak(pid)
            rows = []
            sampler = Sampler(pid)
            async with sampler.running():
                for i in range(args.downloads):
                    save = root / "package.zip" if i == 0 else None
                    size, seconds = await download(session, url, save)
                    rows.append((f"download {i + 1}", size, seconds, status_kib(pid)["VmRSS"]))
                if args.concurrent > 1:
                    started = time.perf_counter()
                    results = await asyncio.gather(
                        *(download(session, url, None) for _ in range(args.concurrent))
                    )
                    seconds = time.perf_counter() - started
                    total = sum(size for size, _ in results)
                    rows.append(
                        (f"{args.concurrent} at once", total, seconds, status_kib(pid)["VmRSS"])
                    )
            after = status_kib(pid)
        check_zip(root / "package.zip", files)

        print(
            f"package: {size / MB:.1f} MB ZIP; its {args.files} inputs match the uploads (SHA-256)"
        )
        print(
            f"gateway B (fresh process): VmRSS {mib(start)} MiB at start, "
            f"{mib(before)} MiB after a warm-up download"
        )
        print()
        print("| download | MB | s | MB/s | VmRSS after (MiB) |")
        print("|---|---|---|---|---|")
        for label, size, seconds, rss in rows:
            rate = size / MB / seconds
            print(f"| {label} | {size / MB:.1f} | {seconds:.2f} | {rate:.0f} | {mib(rss)} |")
        print()
        print(
            f"VmRSS before {mib(before)} MiB, peak {mib(after['VmHWM'])} MiB "
            f"(+{mib(after['VmHWM'] - before)}; sampled max {mib(sampler.max_kib)}), "
            f"after {mib(after['VmRSS'])} MiB (+{mib(after['VmRSS'] - before)})"
        )
    finally:
        for child in reversed(children):
            child.stop()
        await runtime.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10, help="input files in the job")
    parser.add_argument("--file-mb", type=int, default=20, help="size of each file (MB, 10^6 B)")
    parser.add_argument("--downloads", type=int, default=3, help="downloads one after another")
    parser.add_argument("--concurrent", type=int, default=4, help="then this many at once")
    args = parser.parse_args()
    if args.file_mb * MB > 20 * MIB:
        parser.error("a file may be at most MAX_FILE_BYTES (20 MiB)")
    with tempfile.TemporaryDirectory(prefix="package-bench-") as tmp:
        root = Path(tmp)
        with backends(root) as (database_url, redis_url):
            asyncio.run(bench(args, root, database_url, redis_url))


if __name__ == "__main__":
    main()
