"""The blob store's contract, held by both backends: a folder, and a real S3-compatible server
(moto's server mode, started here as its own process; not a mock)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiobotocore.session import get_session
from aiohttp.test_utils import TestServer

from devkit.embedded import free_port, stop_process
from devkit.fakes.n8n import make_bytes
from gateway.settings import Settings
from gateway.storage.blobs import (
    S3_PART_SIZE,
    BlobNotFound,
    BlobStore,
    FilesystemBlobStore,
    check_key,
    open_blob_store,
    run_input_key,
    safe_filename,
)
from tests.support.backends import Backends
from tests.support.console import failure_line, run_console
from tests.support.execute import api_key, execute_url, stream_agent
from tests.support.gateways import GatewayFactory
from tests.support.runtimes import received
from tests.support.tenants import TenantFactory
from tests.support.tokens import SECRET_KEY

MB = 1024 * 1024
S3_KEY_ID = "testing"
S3_SECRET = "testing-secret"


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3-compatible server on a loopback port, for this module's tests."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, log.read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(server, timeout=10)


def s3_settings(endpoint: str, bucket: str) -> Settings:
    return Settings(
        blob_backend="s3",
        s3_endpoint_url=endpoint,
        s3_bucket=bucket,
        s3_prefix="gateway-blobs",
        s3_access_key_id=S3_KEY_ID,
        s3_secret_access_key=S3_SECRET,
    )


async def create_bucket(endpoint: str, bucket: str) -> None:
    async with get_session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id=S3_KEY_ID,
        aws_secret_access_key=S3_SECRET,
    ) as client:
        await client.create_bucket(Bucket=bucket)


async def bucket_keys(endpoint: str, bucket: str) -> list[str]:
    async with get_session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id=S3_KEY_ID,
        aws_secret_access_key=S3_SECRET,
    ) as client:
        listing = await client.list_objects_v2(Bucket=bucket)
        uploads = await client.list_multipart_uploads(Bucket=bucket)
    return [o["Key"] for o in listing.get("Contents", [])] + [
        f"upload:{u['Key']}" for u in uploads.get("Uploads", [])
    ]


@pytest.fixture(params=["fs", "s3"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, s3_endpoint: str
) -> AsyncIterator[tuple[str, BlobStore]]:
    """Each backend in turn, empty."""
    if request.param == "fs":
        settings = Settings(blob_dir=str(tmp_path / "blobs"))
    else:
        bucket = f"bucket-{time.monotonic_ns()}"
        await create_bucket(s3_endpoint, bucket)
        settings = s3_settings(s3_endpoint, bucket)
    async with open_blob_store(settings) as blobs:
        yield request.param, blobs


async def pieces(data: bytes, size: int = 100_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def read_all(blobs: BlobStore, key: str) -> bytes:
    out = io.BytesIO()
    async for chunk in blobs.read(key):
        out.write(chunk)
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 1, 300_000, S3_PART_SIZE * 2 + 12_345])
async def test_what_is_put_reads_back_byte_identical(
    store: tuple[str, BlobStore], size: int
) -> None:
    _backend, blobs = store
    data = make_bytes(size)
    key = run_input_key(7, 0, "report.pdf")

    stored = await blobs.put(key, pieces(data), content_type="application/pdf")

    assert (stored.key, stored.size) == (key, size)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert await blobs.size(key) == size
    assert await read_all(blobs, key) == data


async def test_a_missing_blob_is_blob_not_found_and_delete_is_idempotent(
    store: tuple[str, BlobStore],
) -> None:
    _backend, blobs = store
    key = "runs/1/inputs/0-a.txt"
    with pytest.raises(BlobNotFound):
        await blobs.size(key)
    with pytest.raises(BlobNotFound):
        await read_all(blobs, key)

    await blobs.put(key, pieces(b"first"), content_type="text/plain")
    await blobs.put(key, pieces(b"second, longer"), content_type="text/plain")
    assert await read_all(blobs, key) == b"second, longer"
    await blobs.delete(key)
    await blobs.delete(key)
    with pytest.raises(BlobNotFound):
        await blobs.size(key)


async def test_a_source_that_fails_midway_leaves_nothing_behind(
    store: tuple[str, BlobStore], tmp_path: Path, s3_endpoint: str
) -> None:
    backend, blobs = store
    key = "runs/2/inputs/0-broken.bin"

    async def breaks() -> AsyncIterator[bytes]:
        yield make_bytes(S3_PART_SIZE + 1)  # past one part: an S3 multipart upload is open
        raise RuntimeError("the source broke")

    with pytest.raises(RuntimeError, match="the source broke"):
        await blobs.put(key, breaks(), content_type="application/octet-stream")

    with pytest.raises(BlobNotFound):
        await blobs.size(key)
    if backend == "fs":
        assert isinstance(blobs, FilesystemBlobStore)
        assert [p for p in blobs.root.rglob("*") if p.is_file()] == []
    else:
        bucket = blobs._bucket  # type: ignore[attr-defined]
        assert await bucket_keys(s3_endpoint, bucket) == []


def test_keys_are_checked_and_file_names_made_safe() -> None:
    for bad in ["", "/abs", "a//b", "../x", "a/../b", "a/./b", "sp ace", "é", "x" * 1025]:
        with pytest.raises(ValueError, match="invalid blob key"):
            check_key(bad)
    assert run_input_key(42, 3, "../../etc/passwd") == "runs/42/inputs/3-passwd"
    assert run_input_key(42, 3, "Q3 report (final).pdf") == "runs/42/inputs/3-Q3_report_final_.pdf"
    assert safe_filename("...") == "file"
    assert safe_filename("a" * 300 + ".pdf").endswith(".pdf")
    assert len(safe_filename("a" * 300 + ".pdf")) <= 120


async def test_an_upload_is_stored_in_s3_and_served_from_there_by_any_replica(
    make_gateway: GatewayFactory,
    make_tenant: TenantFactory,
    runtime: TestServer,
    s3_endpoint: str,
) -> None:
    bucket = f"replicas-{time.monotonic_ns()}"
    await create_bucket(s3_endpoint, bucket)
    s3 = dataclasses.asdict(s3_settings(s3_endpoint, bucket))
    overrides = {k: v for k, v in s3.items() if k.startswith(("s3_", "blob_"))}
    tenant = await make_tenant()
    tenant.client = await make_gateway(**overrides)
    other_replica = await make_gateway(**overrides)
    agent = await stream_agent(
        tenant, runtime, input_format=[{"name": "documents", "type": "files"}]
    )
    content = make_bytes(3 * MB)
    upload = {
        "type": "file",
        "name": "scan.pdf",
        "mime": "application/pdf",
        "data": "data:application/pdf;base64," + base64.b64encode(content).decode(),
    }
    body = json.dumps({"documents": [upload]}).encode()

    resp = await tenant.client.post(
        execute_url(agent["id"]),
        headers={**api_key(tenant), "Content-Type": "application/json"},
        data=io.BytesIO(body),
    )

    assert resp.status == 200, await resp.text()
    run_id = resp.headers["X-Run-Id"]
    assert await bucket_keys(s3_endpoint, bucket) == [
        f"gateway-blobs/runs/{run_id}/inputs/0-scan.pdf"
    ]
    [sent] = received(runtime)[0]["payload"]["documents"]
    # The URL names the first replica; the same path and signature work on the other one.
    path_and_query = sent["url"].split("/", 3)[3]
    url = other_replica.make_url("/" + path_and_query)
    async with aiohttp.ClientSession() as anyone, anyone.get(url) as got:
        assert got.status == 200
        assert await got.read() == content


def open_fds_to(path: Path) -> int:
    """How many of this process's file descriptors point at ``path``."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            if Path(os.readlink(fd)) == path:
                count += 1
        except OSError:
            continue
    return count


@pytest.mark.parametrize("when", ["opening", "reading", "cancelled twice"])
async def test_a_reader_cancelled_at_any_moment_leaves_no_file_open(
    tmp_path: Path, when: str
) -> None:
    blobs = FilesystemBlobStore(tmp_path)
    await blobs.put("runs/1/inputs/0-a.bin", pieces(make_bytes(2_000_000)), content_type="x/y")
    path = tmp_path / "runs/1/inputs/0-a.bin"

    async def consume() -> None:
        # As every reader in the gateway does: the read is closed when its reader stops.
        reading = blobs.read("runs/1/inputs/0-a.bin", chunk_size=1024)
        async with contextlib.aclosing(reading) as chunks:  # type: ignore[type-var]
            async for _chunk in chunks:
                await asyncio.sleep(0)

    for _ in range(20):
        task = asyncio.create_task(consume())
        await asyncio.sleep(0 if when == "opening" else 0.005)
        task.cancel()
        if when == "cancelled twice":
            # The second cancellation lands while the reader is cleaning up after the first.
            await asyncio.sleep(0)
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # A file opened by a thread after its reader had gone is closed once the open ends.
        for _ in range(100):
            if open_fds_to(path) == 0:
                break
            await asyncio.sleep(0.01)
        assert open_fds_to(path) == 0, when


def test_a_gateway_whose_blob_folder_cannot_be_written_refuses_to_start(
    backends: Backends, tmp_path: Path
) -> None:
    """An image run with a read-only root and the fs default would answer 503 on every file
    feature; it stops at once instead, naming the settings to change. (A folder under a regular
    file cannot be created, whoever the user: root included.)"""
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_bytes(b"")
    env = {
        **os.environ,
        "DATABASE_URL": backends.database_url,
        "REDIS_URL": backends.redis_url,
        "SECRET_KEY": SECRET_KEY,
        "GATEWAY_PORT": str(free_port()),
        "BLOB_BACKEND": "fs",
        "BLOB_DIR": str(not_a_folder / "blobs"),
    }
    line = failure_line(run_console("serve", env=env))

    assert (line["event"], line["command"]) == ("start_failed", "serve")
    assert line["error"].startswith("BLOB_DIR ")
    assert "not writable" in line["error"]
    assert "BLOB_BACKEND=s3" in line["error"]
