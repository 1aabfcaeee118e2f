"""Everything a benchmark runs against, on 127.0.0.1, started and stopped by the benchmark.

:class:`Stack` holds the shared parts: a temporary directory, the embedded PostgreSQL
(``durable=False``) and Redis, the store consumer (``agent-gateway consume``), the bench
runtime (``bench/origin_server.py``), nginx when installed, and one organisation with an ingest
key. Gateways (``agent-gateway serve``) are started per measurement with the settings it
needs. Every process is registered on an :class:`contextlib.ExitStack` as it starts, so that
all of them are stopped by their PIDs when the stack closes, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.processes import (
    BenchError,
    Child,
    children_of,
    nginx_worker,
    python_module,
    spawn,
    wait_for_port,
)
from devkit.embedded import free_port

# The gateway's default event keys prefix (EVENTS_STREAM) and buffer partitions.
STREAM = "runs:events"
PARTITIONS = 16

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{origin_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_buffer_size 256k;
            # Unused with buffering off, but nginx validates them against proxy_buffer_size.
            proxy_buffers 4 256k;
            proxy_busy_buffers_size 256k;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def find_nginx(given: str | None = None) -> str | None:
    """The nginx binary to use, or None when there is none."""
    if given:
        return given if Path(given).is_file() else None
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None
    )


def gateway_command() -> list[str]:
    """``agent-gateway`` from the running interpreter's environment."""
    script = Path(sys.executable).parent / "agent-gateway"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "gateway.cli"]


@dataclass(frozen=True)
class Backends:
    """The embedded PostgreSQL and Redis."""

    database_url: str
    redis_url: str


@dataclass
class Gateway:
    """One gateway process and the settings it was started with."""

    name: str
    child: Child
    base: str
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        """The gateway's PID."""
        return self.child.pid


class Stack:
    """The shared processes of one benchmark run; close it to stop them all."""

    def __init__(
        self,
        exit_stack: contextlib.ExitStack,
        *,
        nginx: str | None,
        gateway_argv: Sequence[str] | None = None,
        gateway_env: dict[str, str] | None = None,
        keep_logs: Path | None = None,
    ) -> None:
        self._exit = exit_stack
        # Another build's ``agent-gateway`` may be measured against the same stack.
        self._gateway_argv = list(gateway_argv or gateway_command())
        # Settings every gateway gets over its measurement's own (experiments).
        self._gateway_env = dict(gateway_env or {})
        self.root = Path(tempfile.mkdtemp(prefix="agw-bench-"))
        exit_stack.callback(shutil.rmtree, self.root, True)  # registered first: runs last
        if keep_logs is not None:
            # Runs before the removal, after every process has stopped (registered earlier).
            exit_stack.callback(_copy_logs, self.root, keep_logs)
        self.secret_key = secrets.token_urlsafe(32)
        self.admin_token = secrets.token_urlsafe(24)
        self._nginx_binary = nginx
        self.backends: Backends | None = None
        self.postgres_pid: int | None = None
        # PostgreSQL's server log (its stderr), where a measurement may have statements logged.
        self.postgres_log = self.root / "postgres.log"
        self.redis_pid: int | None = None
        self.origin: Child | None = None
        self.origin_base = ""
        self.nginx: Child | None = None
        self.nginx_base: str | None = None
        self.nginx_worker_pid: int | None = None
        self.consumer: Child | None = None
        self.org_id: uuid.UUID | None = None
        self.ingest_key = ""
        self._gateway_no = 0

    # ------------------------------------------------------------------ shared parts

    def start(self) -> None:
        """Start the origin, PostgreSQL, Redis and the store consumer; create the tenant."""
        self.start_origin()
        print("starting embedded PostgreSQL and Redis ...", flush=True)
        self.backends = self._start_backends()
        self.start_consumer()
        self.org_id, self.ingest_key = asyncio.run(self._create_tenant())

    def start_origin(self) -> None:
        """The bench runtime, in its own process."""
        port = free_port()
        self.origin = self._spawn(
            "origin", python_module("origin_server", "--port", str(port)), "origin.log"
        )
        wait_for_port(self.origin, port, 30)
        self.origin_base = f"http://127.0.0.1:{port}"

    def start_nginx(self) -> bool:
        """nginx in front of the origin (once); False when the binary is missing."""
        if self.nginx is not None:
            return True
        if self._nginx_binary is None or self.origin is None:
            return False
        prefix = self.root / "nginx"
        prefix.mkdir(exist_ok=True)
        port = free_port()
        conf = prefix / "nginx.conf"
        origin_port = self.origin_base.rsplit(":", 1)[1]
        conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, origin_port=origin_port))
        self.nginx = self._spawn(
            "nginx",
            [self._nginx_binary, "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "e.log")],
            "nginx.log",
        )
        wait_for_port(self.nginx, port, 15)
        self.nginx_base = f"http://127.0.0.1:{port}"
        self.nginx_worker_pid = nginx_worker(self.nginx.pid)
        return True

    def _start_backends(self) -> Backends:
        from devkit.embedded import EmbeddedPostgres, EmbeddedRedis
        from store.migrate import migrate_url

        postgres = EmbeddedPostgres(self.root / "postgres", durable=False)
        self._exit.callback(postgres.stop)
        database_url = postgres.start()
        redis = EmbeddedRedis(self.root / "redis")
        self._exit.callback(redis.stop)
        redis_url = redis.start()
        self.postgres_pid = postgres.process.pid if postgres.process is not None else None
        self.redis_pid = redis.process.pid if redis.process is not None else None
        asyncio.run(migrate_url(database_url))
        return Backends(database_url, redis_url)

    def env(self, **extra: str) -> dict[str, str]:
        """A process environment with the gateway's settings for this stack."""
        if self.backends is None:
            raise BenchError("the stack is not started")
        env = {k: v for k, v in os.environ.items() if k != "PUBLIC_BASE_URL"}
        env.update(
            DATABASE_URL=self.backends.database_url,
            REDIS_URL=self.backends.redis_url,
            SECRET_KEY=self.secret_key,
            ADMIN_TOKEN=self.admin_token,
            GATEWAY_HOST="127.0.0.1",
            # Stopped at once at the end: no load balancer to wait for.
            DRAIN_PRE_STOP_S="0",
            DRAIN_TIMEOUT_S="5",
            # The consumer's /metrics and /healthz are not needed here; keep the port free.
            CONSUMER_PORT="0",
            LOG_LEVEL="INFO",
        )
        env.update(extra)
        return env

    def start_consumer(self, timeout: float = 60.0) -> Child:
        """The store consumer, ``agent-gateway consume`` (once), up to reading the stream."""
        if self.consumer is None or not self.consumer.alive():
            self.consumer = self._spawn(
                "consumer", [*gateway_command(), "consume"], "consumer.log", self.env()
            )
            self._wait_for_consumer(self.consumer, timeout)
        return self.consumer

    def _wait_for_consumer(self, consumer: Child, timeout: float) -> None:
        """Until the consumer holds every partition of the buffer (it has started reading)."""
        import redis as sync_redis

        assert self.backends is not None
        client = sync_redis.Redis.from_url(self.backends.redis_url)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not consumer.alive():
                    raise BenchError(f"the consumer exited:\n{consumer.log_tail()}")
                holders = [
                    client.get(f"{{{STREAM}:p{partition}}}:lease")
                    for partition in range(PARTITIONS)
                ]
                if all(h is not None and f"-{consumer.pid}-" in h.decode() for h in holders):
                    return
                time.sleep(0.05)
        finally:
            client.close()
        raise BenchError(f"the consumer did not start reading within {timeout:g} s")

    def stop_consumer(self) -> None:
        """Stop the store consumer (it finishes the batch in hand)."""
        if self.consumer is not None:
            self.consumer.stop()
            self.consumer = None

    def postgres_pids(self) -> list[int]:
        """The postmaster and its children (backends) as they are now."""
        if self.postgres_pid is None:
            return []
        return [self.postgres_pid, *children_of(self.postgres_pid)]

    # ------------------------------------------------------------------ gateways

    def start_gateways(self, variants: Sequence[tuple[str, dict[str, str]]]) -> list[Gateway]:
        """One gateway per ``(name, settings)``, started side by side; stopped by PID later."""
        gateways = []
        for name, settings in variants:
            self._gateway_no += 1
            # A given GATEWAY_PORT is kept: a replacement replica takes its predecessor's address.
            port = int(settings.get("GATEWAY_PORT") or free_port())
            child = self._spawn(
                f"gateway {name}",
                [*self._gateway_argv, "serve"],
                f"gateway-{self._gateway_no}.log",
                self.env(**{**settings, **self._gateway_env, "GATEWAY_PORT": str(port)}),
            )
            gateways.append(Gateway(name, child, f"http://127.0.0.1:{port}", dict(settings)))
        for gateway in gateways:
            wait_for_port(gateway.child, int(gateway.base.rsplit(":", 1)[1]), 60)
        return gateways

    def start_gateway(self, name: str, **settings: str) -> Gateway:
        """One gateway with ``settings`` over the defaults."""
        return self.start_gateways([(name, settings)])[0]

    def start_module(self, name: str, module: str, *args: str, port: int) -> Child:
        """A bench module as a server process listening on ``port``."""
        child = self._spawn(name, python_module(module, *args), f"{module}-{port}.log")
        wait_for_port(child, port, 30)
        return child

    def _spawn(
        self, name: str, argv: Sequence[str], log_name: str, env: dict[str, str] | None = None
    ) -> Child:
        child = spawn(name, argv, self.root / log_name, env)
        self._exit.callback(child.stop)
        return child

    # ------------------------------------------------------------------ tenant and agents

    async def _pool(self) -> Any:
        from store.pool import create_pool

        if self.backends is None:
            raise BenchError("the stack is not started")
        return await create_pool(self.backends.database_url, min_size=1, max_size=8)

    async def _create_tenant(self) -> tuple[uuid.UUID, str]:
        from gateway.admin.service import AdminService

        pool = await self._pool()
        try:
            service = AdminService(pool, self.secret_key)
            org = await service.create_org({"name": "bench"})
            key = await service.create_ingest_key(org.id)
            return org.id, key.key
        finally:
            await pool.close()

    def create_agents(self, bodies: Iterable[dict[str, Any]]) -> list[int]:
        """Agents of the bench organisation (through the admin service), in order."""
        return asyncio.run(self._create_agents(list(bodies)))

    async def _create_agents(self, bodies: list[dict[str, Any]]) -> list[int]:
        from gateway.admin.service import AdminService

        if self.org_id is None:
            raise BenchError("the stack is not started")
        org_id = self.org_id
        pool = await self._pool()
        ids: list[int] = [0] * len(bodies)
        gate = asyncio.Semaphore(8)

        async def one(index: int, body: dict[str, Any]) -> None:
            async with gate:
                agent = await service.create_agent(org_id, body)
                ids[index] = agent.agent.id

        try:
            service = AdminService(pool, self.secret_key)
            await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
        finally:
            await pool.close()
        return ids

    def clone_agents(self, body: dict[str, Any], count: int) -> list[int]:
        """``count`` agents like ``body``: one through the admin service, the others copied
        from it in one statement, each with an API key of its own (as the admin service makes
        them: a trigger derives it for the runtime's payload)."""
        (first,) = self.create_agents([body])
        return [first, *asyncio.run(self._clone(first, count - 1))] if count > 1 else [first]

    async def _clone(self, agent_id: int, count: int) -> list[int]:
        from gateway.security.apikeys import derive_agent_api_key, hash_key, new_agent_key_salt

        salts = [new_agent_key_salt() for _ in range(count)]
        digests = [hash_key(derive_agent_api_key(self.secret_key, salt)) for salt in salts]
        pool = await self._pool()
        try:
            rows = await pool.fetch(
                """INSERT INTO agents (org_id, name, managed_by, status, allow_external_triggers,
                       output_kind, runtime, default_input, input_format, running_timeout_ms,
                       api_key_salt, api_key_hash)
                   SELECT org_id, name || ' ' || k.g, managed_by, status,
                       allow_external_triggers, output_kind, runtime, default_input,
                       input_format, running_timeout_ms, k.salt, k.digest
                   FROM agents,
                       unnest($2::bytea[], $3::bytea[]) WITH ORDINALITY AS k(salt, digest, g)
                   WHERE id = $1
                   RETURNING id""",
                agent_id,
                salts,
                digests,
            )
        finally:
            await pool.close()
        return sorted(int(r["id"]) for r in rows)

    def write_ids(self, name: str, ids: Iterable[int]) -> Path:
        """A file with one id per line, for the load generator's ``--ids``."""
        path = self.root / f"{name}.ids"
        path.write_text("".join(f"{i}\n" for i in ids))
        return path

    def auth_headers(self) -> list[str]:
        """The ``--header`` arguments that authenticate as the bench organisation."""
        return [f"Authorization: Bearer {self.ingest_key}", "Content-Type: application/json"]


def agent_body(name: str, webhook_url: str, output_kind: str, **extra: Any) -> dict[str, Any]:
    """The admin body of an n8n agent pointing at ``webhook_url``."""
    return {
        "name": name,
        "output_kind": output_kind,
        "runtime": {"kind": "n8n", "webhook_url": webhook_url},
        "running_timeout_ms": 600_000,
        **extra,
    }


def run_json(argv: Sequence[str], *, timeout: float, what: str) -> dict[str, Any]:
    """Run a client process to completion and read the one JSON line it prints."""
    import subprocess

    started = time.monotonic()
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise BenchError(f"{what} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise BenchError(f"{what} printed nothing: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    result["wall_s"] = time.monotonic() - started
    return result


def _copy_logs(root: Path, into: Path) -> None:
    """Copy every process's log of a bench run (``*.log`` under ``root``) into ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    for log in root.glob("*.log"):
        shutil.copy2(log, into / log.name)
    print(f"logs kept in {into}", flush=True)
