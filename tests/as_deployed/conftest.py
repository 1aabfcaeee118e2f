"""The production process tree, from the image, for the whole session.

``scripts/as-deployed.sh`` builds the image and runs these tests with ``AS_DEPLOYED=1``
(``tests/conftest.py`` leaves this folder out otherwise). The tree, all on 127.0.0.1:

- PostgreSQL and Redis from the dev kit, and moto's S3 server (a bucket made when the
  ConfigMap selects the ``s3`` blob backend), as host processes;
- ``migrate`` once, then two ``serve`` and two ``consume`` containers from the image, each
  configured and confined as ``deploy/k8s`` configures its pod (``tests/support/deployed.py``);
- the shipped ``deploy/nginx.conf`` in front of the two ``serve`` replicas;
- the fake n8n runtime, which the agents point at.

The test files run in their numbered order; the refused-keys flow comes last, since it locks
127.0.0.1 out of every route that takes a key for a minute.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devkit.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from devkit.nginx import Nginx, nginx_binary
from tests.support.deployed import (
    S3_SECRET_VALUES,
    SECRET_VALUES,
    Podman,
    Workload,
    configmap,
    describe,
    host_overrides,
    real_secret,
    secret_keys,
    workload,
)
from tests.support.deployed_tree import Host, Org, Tree, http_status

REPLICAS = 2
CONSUMERS = 2
S3_KEYS = ("as-deployed-key", "as-deployed-secret")


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    # The stage's timeout sends SIGTERM: unwind, so that the fixtures remove the containers.
    raise KeyboardInterrupt("SIGTERM")


signal.signal(signal.SIGTERM, _raise_on_sigterm)


def _create_bucket(endpoint: str, bucket: str, region: str) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=S3_KEYS[0],
        aws_secret_access_key=S3_KEYS[1],
    )
    options: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        options["CreateBucketConfiguration"] = {"LocationConstraint": region}
    s3.create_bucket(**options)


@pytest.fixture(scope="session")
def tree() -> Iterator[Tree]:
    """Start the whole tree once; remove every container and stop every process at the end."""
    image = os.environ.get("AS_DEPLOYED_IMAGE")
    podman_cmd = os.environ.get("AS_DEPLOYED_PODMAN")
    workdir = Path(os.environ.get("AS_DEPLOYED_WORKDIR", ""))
    if not (image and podman_cmd and workdir.is_dir()):
        pytest.fail("run through scripts/as-deployed.sh (it builds the image and sets the env)")
    binary = nginx_binary()
    if binary is None:
        pytest.fail("nginx is not installed (scripts/as-deployed.sh installs it)")
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    host = Host(logs)
    podman = Podman(podman_cmd, image, f"agw-{secrets.token_hex(3)}", logs)
    postgres = EmbeddedPostgres(workdir / "postgres", durable=False)
    redis = EmbeddedRedis(workdir / "redis")
    nginx: Nginx | None = None
    try:
        database_url = postgres.start()
        redis_url = redis.start()
        s3_port, runtime_port, front_port = free_port(), free_port(), free_port()
        s3_endpoint = f"http://127.0.0.1:{s3_port}"
        host.start(
            "moto",
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
        )
        host.start(
            "n8n",
            [
                sys.executable,
                "-c",
                "import sys; from aiohttp import web; "
                "from devkit.fakes.n8n import create_fake_runtime; "
                "web.run_app(create_fake_runtime(), host='127.0.0.1', port=int(sys.argv[1]))",
                str(runtime_port),
            ],
        )
        front = f"http://127.0.0.1:{front_port}"
        admin_token = secrets.token_urlsafe(24)
        secret = real_secret(
            {
                "DATABASE_URL": database_url,
                "REDIS_URL": redis_url,
                "SECRET_KEY": secrets.token_urlsafe(48),
                "ADMIN_TOKEN": admin_token,
                S3_SECRET_VALUES[0]: S3_KEYS[0],
                S3_SECRET_VALUES[1]: S3_KEYS[1],
            }
        )
        given = [k for k in secret_keys() if k in (*SECRET_VALUES, *S3_SECRET_VALUES)]
        kit = configmap()
        blob_backend = kit.get("BLOB_BACKEND", "fs")
        for url in (s3_endpoint, f"http://127.0.0.1:{runtime_port}"):
            deadline = time.monotonic() + 30
            while http_status(url) == 0:
                assert time.monotonic() < deadline, f"{url} did not start (logs: {logs})"
                time.sleep(0.1)
        if blob_backend == "s3":
            _create_bucket(s3_endpoint, kit["S3_BUCKET"], kit.get("S3_REGION", "us-east-1"))
        print(f"\nas-deployed: ConfigMap keys: {sorted(kit)}; BLOB_BACKEND={blob_backend}")

        def configure(file: str, **values: str) -> Workload:
            work = workload(file, secret)
            done = host_overrides(
                work,
                blob_backend=blob_backend,
                s3_endpoint=s3_endpoint,
                **values,
            )
            print(f"as-deployed: {describe(done, given)}")
            return done

        common = {"GATEWAY_HOST": "127.0.0.1", "PUBLIC_BASE_URL": front}
        migrate = configure("migrate-job.yaml")
        code, output = podman.run_to_end("migrate", migrate, timeout=180)
        assert code == 0, f"migrate exited with {code}:\n{output[-4000:]}"

        serve_ports = [free_port() for _ in range(REPLICAS)]
        consumer_ports = [free_port() for _ in range(CONSUMERS)]
        t = Tree(
            front=front,
            admin_token=admin_token,
            runtime=f"http://127.0.0.1:{runtime_port}",
            podman=podman,
            redis=redis,
            nginx=Nginx(
                binary, workdir / "nginx", front_port, [f"127.0.0.1:{p}" for p in serve_ports]
            ),
            serve_ports=serve_ports,
            consumer_ports=consumer_ports,
        )
        nginx = t.nginx
        for i, port in enumerate(serve_ports):
            t.serve_works.append(
                configure("gateway-deployment.yaml", **common, GATEWAY_PORT=str(port))
            )
            t.serve_names.append(podman.start(f"serve-{i}", t.serve_works[i]))
        for i, port in enumerate(consumer_ports):
            t.consumer_works.append(
                configure(
                    "consumer-deployment.yaml",
                    **common,
                    CONSUMER_HOST="127.0.0.1",
                    CONSUMER_PORT=str(port),
                )
            )
            t.consumer_names.append(podman.start(f"consume-{i}", t.consumer_works[i]))
        checked = nginx.check()
        assert checked.returncode == 0, checked.stderr
        nginx.start()
        for i in range(REPLICAS):
            t.wait_serve_ready(i)
        for i in range(CONSUMERS):
            t.wait_consumer_ready(i)
        deadline = time.monotonic() + 30
        while http_status(f"{front}/readyz") != 200:
            assert time.monotonic() < deadline, f"nginx at {front} does not reach the replicas"
            time.sleep(0.1)
        yield t
    finally:
        podman.remove_all()
        if nginx is not None:
            nginx.stop()
        host.stop_all()
        redis.stop()
        postgres.stop()
        print(f"\nas-deployed: logs in {logs}")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A caller of the deployed service (from 127.0.0.1)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        yield session


@pytest.fixture
async def org(tree: Tree, http: aiohttp.ClientSession) -> Org:
    """A fresh organisation and ingest key."""
    async with http.post(
        f"{tree.front}/admin/orgs", json={"name": "Acme"}, headers=tree.admin
    ) as r:
        assert r.status == 201, await r.text()
        org_id = (await r.json())["id"]
    async with http.post(f"{tree.front}/admin/orgs/{org_id}/keys", headers=tree.admin) as r:
        assert r.status == 201, await r.text()
        key = (await r.json())["key"]
    return Org(tree, http, str(org_id), key)
