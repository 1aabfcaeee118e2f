"""``agent-gateway dev``: everything in one command, on a fresh machine.

Starts (unless ``DATABASE_URL``/``REDIS_URL`` are given) a real PostgreSQL and a real Redis
under a local data folder, migrates, seeds a demo organisation with an ingest key and demo
agents, starts the demo runtime, the store consumer (its own process) and the gateway, and
prints how to call it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from devkit.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    die_with_parent,
    free_port,
    stop_process,
)
from devkit.fakes.n8n import create_fake_runtime, node_id
from devkit.fakes.trigger_dev import create_fake_trigger_dev
from gateway.admin.service import AdminService
from gateway.http.app import create_app
from gateway.http.server import GatewayServer, wait_for_stop_signal
from gateway.security.credentials import CredentialService
from gateway.settings import Settings
from store import orgs
from store.enums import ResultDelivery
from store.migrate import migrate_url
from store.pool import create_pool

# slug -> (name, output_kind, where it runs): an n8n webhook path on the demo runtime, or
# "trigger.dev" for a task on the demo Trigger.dev API.
DEMO_AGENTS = {
    "csv": ("Demo CSV report", "file_download", "report.csv?outputs=1"),
    "pdf": ("Demo PDF report", "file_download", "report.pdf?outputs=1"),
    "failing": ("Demo failing report", "file_download", "json-error"),
    "summary": ("Demo summary (answers at once)", "json", "json"),
    "callback": ("Demo workflow that reports back", "json", "accepted?report_delay_ms=500"),
    # n8n's default Webhook node ("Respond: Immediately") and an HTTP Request node calling back.
    "immediate": (
        "Demo n8n workflow that answers at once and calls back",
        "json",
        "immediate?report_delay_ms=500",
    ),
    "task": ("Demo Trigger.dev task", "json", "trigger.dev"),
    "assistant": (
        "Demo streaming assistant",
        "stream",
        "stream?nodes=Agent%201,Agent%202&interleave=1&pace_ms=150",
    ),
}
# Settings beyond the runtime, per demo agent (kept up to date on every start).
DEMO_AGENT_EXTRAS: dict[str, dict[str, Any]] = {
    "assistant": {
        "blocks": [{"id": node_id(n), "name": n} for n in ("Agent 1", "Agent 2")],
        "input_format": [
            {"name": "message", "type": "string"},
            {"name": "userId", "type": "string"},
            {"name": "maxTokens", "type": "number"},
            {"name": "documents", "type": "files"},
        ],
    },
}
DEMO_TRIGGER_DEV_KEY = "tr_dev_demo"


@dataclasses.dataclass(frozen=True)
class DemoRuntimes:
    """Where the demo runtimes listen."""

    n8n_url: str
    trigger_dev_url: str

    def runtime_for(self, where: str) -> dict[str, Any]:
        """The agent runtime config for a ``DEMO_AGENTS`` entry."""
        if where == "trigger.dev":
            return {
                "kind": "trigger.dev",
                "api_url": self.trigger_dev_url,
                "task_id": "summarise",
                "secret_key": DEMO_TRIGGER_DEV_KEY,
            }
        runtime: dict[str, Any] = {"kind": "n8n", "webhook_url": f"{self.n8n_url}/webhook/{where}"}
        if where.startswith(("accepted", "immediate")):
            runtime["result_delivery"] = ResultDelivery.CALLBACK.value
        return runtime


def _persistent_secret(data_dir: Path, name: str) -> str:
    path = data_dir / name
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(32)
    path.write_text(value)
    path.chmod(0o600)
    return value


async def _seed_demo(settings: Settings, data_dir: Path, runtimes: DemoRuntimes) -> dict[str, Any]:
    """Create the demo organisation once; on later starts point its agents at the runtimes
    (they listen on new ports) and add demo agents that are new since."""
    state_file = data_dir / "demo.json"
    state: dict[str, Any] = json.loads(state_file.read_text()) if state_file.exists() else {}
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    admin = AdminService(pool, settings.secret_key)
    try:
        if not state or not await orgs.org_exists(pool, uuid.UUID(state["org_id"])):
            org = await admin.create_org({"name": "Demo organisation"})
            key = await admin.create_ingest_key(org.id)
            user_id = await admin.create_user(org.id, {"email": "demo@example.com"})
            state = {
                "org_id": str(org.id),
                "ingest_key": key.key,
                "user_id": str(user_id),
                "agents": {},
            }
        for slug, (name, output_kind, where) in DEMO_AGENTS.items():
            runtime = runtimes.runtime_for(where)
            extras = DEMO_AGENT_EXTRAS.get(slug, {})
            if slug in state["agents"]:
                await admin.update_agent(
                    state["agents"][slug]["id"], {"runtime": runtime, **extras}
                )
                continue
            agent = await admin.create_agent(
                uuid.UUID(state["org_id"]),
                {
                    "name": name,
                    "output_kind": output_kind,
                    "runtime": runtime,
                    "default_input": {"topic": "Demo report"},
                    "running_timeout_ms": 120_000,
                    **extras,
                },
            )
            state["agents"][slug] = {"id": agent.agent.id, "api_key": agent.api_key}
        await _seed_reporting_demo(settings, pool, state)
        state_file.write_text(json.dumps(state, indent=2))
        state_file.chmod(0o600)
    finally:
        await pool.close()
    return state


async def _seed_reporting_demo(
    settings: Settings, pool: asyncpg.Pool, state: dict[str, Any]
) -> None:
    """A standalone agent that reports its own runs (ingest) and a credential the demo
    workflows may resolve, created once."""
    org_id = uuid.UUID(state["org_id"])
    if "imports" not in state["agents"]:
        agent = await AdminService(pool, settings.secret_key).create_agent(
            org_id,
            {
                "name": "Demo standalone importer",
                "managed_by": "standalone",
                "runtime": {"kind": "n8n", "webhook_url": "http://127.0.0.1:9/unused"},
            },
        )
        state["agents"]["imports"] = {"id": agent.agent.id, "api_key": agent.api_key}
    if "credential_id" not in state:
        created = await CredentialService.for_settings(pool, settings).create(
            org_id,
            {"name": "Demo CRM", "type": "api_key", "data": {"api_key": "demo-crm-key"}},
        )
        state["credential_id"] = str(created.id)
    if not state.get("credential_granted"):
        # An agent resolves only the credentials granted to it: the demo workflows that
        # resolve it (the callback agent's, and the standalone importer's runs) get it.
        admin = AdminService(pool, settings.secret_key)
        for slug in ("callback", "imports"):
            await admin.update_agent(
                state["agents"][slug]["id"],
                {"credential_ids": [str(state["credential_id"])]},
            )
        state["credential_granted"] = True


def _banner(settings: Settings, state: dict[str, Any], runtimes: DemoRuntimes) -> str:
    base = f"http://{settings.host}:{settings.port}"
    key = state["ingest_key"]
    ids = {slug: agent["id"] for slug, agent in state["agents"].items()}
    csv_id, pdf_id, failing_id = ids["csv"], ids["pdf"], ids["failing"]
    agent_ids = " ".join(f"{slug}={agent_id}" for slug, agent_id in ids.items())
    agent_keys = " ".join(f"{slug}={a['api_key']}" for slug, a in state["agents"].items())
    auth = f'-H "Authorization: Bearer {key}"'
    once = "-H 'Idempotency-Key: demo-1'"
    json_type = "-H 'Content-Type: application/json'"
    resolving = json.dumps({"input": {"credential_id": state["credential_id"]}})
    registering = json.dumps({"externalRunId": "cron-1"})
    ingesting = json.dumps(
        {"externalRunId": "exec_001", "status": "completed", "output": {"pages": 42}, "outputs": 42}
    )
    agents = f"{base}/api/agents"
    body = (
        '-H \'Content-Type: application/json\' -d \'{"input": {"topic": "Q3 financial summary"}}\''
    )
    execute = f"{base}/api/workflows/{ids['assistant']}/execute"
    package = f"{base}/v0/workflows/{ids['assistant']}/jobs/<runId>/download"
    api_key = f"-H 'Content-Type: application/json' -H 'X-API-Key: {key}'"
    stream_body = json.dumps(
        {"message": "Count to five", "stream": True, "selectedOutputs": ["agent1.content"]}
    )
    file_body = json.dumps(
        {
            "message": "Summarise this",
            "documents": [
                {
                    "type": "file",
                    "data": "data:text/plain;base64,SGVsbG8sIHdvcmxkIQ==",
                    "name": "hello.txt",
                    "mime": "text/plain",
                }
            ],
        }
    )
    return f"""
agent-gateway dev is running
  gateway         {base}
  database        {settings.database_url}
  redis           {settings.redis_url}
  demo runtimes   n8n-like {runtimes.n8n_url}  Trigger.dev-like {runtimes.trigger_dev_url}
  ingest key      {key}
  admin token     {settings.admin_token}
  demo agents     {agent_ids}
  agent API keys  {agent_keys}

Download the demo CSV (saved under the name the gateway sends):
  curl -sS -OJ -D - -X POST {base}/api/agents/{csv_id}/runs/trigger-and-download {auth} {body}
Download the demo PDF:
  curl -sS -OJ -X POST {base}/api/agents/{pdf_id}/runs/trigger-and-download {auth} {body}
A workflow that fails (502 with its JSON):
  curl -sS -X POST {base}/api/agents/{failing_id}/runs/trigger-and-download {auth} {body}
The run row (use the X-Run-Id header of a download):
  curl -sS {base}/api/agents/{csv_id}/runs/<runId> {auth}
Trigger and wait: the run with its output, in one request:
  curl -sS -X POST {base}/api/agents/{ids["summary"]}/runs/trigger-and-wait {auth} {body}
The same on a Trigger.dev task, followed through its realtime feed:
  curl -sS -X POST {base}/api/agents/{ids["task"]}/runs/trigger-and-wait {auth} {body}
Trigger without waiting (a workflow that reports back through callbacks), then poll the run:
  curl -sS -X POST {base}/api/agents/{ids["callback"]}/runs/trigger {auth} {once} {body}
  curl -sS {base}/api/agents/{ids["callback"]}/runs/<runId> {auth}
An n8n workflow that answers at once ("Workflow was started") and reports through an HTTP
Request node to its callbackUrl (docs/examples/n8n/):
  curl -sS -X POST {base}/api/agents/{ids["immediate"]}/runs/trigger-and-wait {auth} {body}
A workflow that resolves the demo credential with its run's credentials token:
  curl -sS -X POST {agents}/{ids["callback"]}/runs/trigger-and-wait {auth} {json_type} \
    -d '{resolving}'
Register a run your runtime started on its own (a credentials token comes back):
  curl -sS -X POST {agents}/{ids["summary"]}/runs/register {auth} {json_type} -d '{registering}'
A standalone agent reports a run it ran by itself:
  curl -sS -X POST {agents}/{ids["imports"]}/runs/ingest {auth} {json_type} \
    -d '{ingesting}'
Execute a workflow, its output streamed live as Server-Sent Events (seed 004):
  curl -sS -N -X POST {execute} {api_key} -d '{stream_body}'
The same, answered once, with a file sent along (base64):
  curl -sS -X POST {execute} {api_key} -d '{file_body}'
A job's inputs and outputs as one ZIP (seed 003; the job is a runId, e.g. the one above),
then the ZIP itself from the signed_url it answers:
  curl -sS -X PUT {package} -H 'Authorization: {key}'
  curl -sS -OJ '<signed_url>'
Stop with Ctrl-C.
"""


async def _serve_all(settings: Settings, data_dir: Path) -> None:
    runtime_runner = web.AppRunner(
        create_fake_runtime(), access_log=None, handler_cancellation=True
    )
    await runtime_runner.setup()
    runtime_port = free_port()
    await web.TCPSite(runtime_runner, "127.0.0.1", runtime_port).start()
    trigger_dev_runner = web.AppRunner(
        # Its tasks run on their own clock, as real ones do: the realtime feed sees them end.
        create_fake_trigger_dev(DEMO_TRIGGER_DEV_KEY, advance="time", step_s=0.5),
        access_log=None,
        # The gateway's held realtime long-poll ends with its connection: otherwise the
        # runner's cleanup waited for the hold (up to 20 s) before a stopped dev could exit.
        handler_cancellation=True,
    )
    await trigger_dev_runner.setup()
    trigger_dev_port = free_port()
    await web.TCPSite(trigger_dev_runner, "127.0.0.1", trigger_dev_port).start()
    runtimes = DemoRuntimes(
        n8n_url=f"http://127.0.0.1:{runtime_port}",
        trigger_dev_url=f"http://127.0.0.1:{trigger_dev_port}",
    )

    await migrate_url(settings.database_url)
    state = await _seed_demo(settings, data_dir, runtimes)

    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "SECRET_KEY": settings.secret_key,
        "LOG_LEVEL": settings.log_level,
        # The consumer's /metrics and /healthz, on a port nothing else holds.
        "CONSUMER_PORT": os.environ.get("CONSUMER_PORT") or str(free_port()),
    }
    # A long-lived child, as in production: the consumer is its own process. It drains and
    # exits if this launcher is killed, instead of holding the database open.
    consumer = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "gateway.cli", "consume"],
        env=env,
        preexec_fn=die_with_parent(signal.SIGTERM),
    )

    gateway = GatewayServer(create_app(settings), settings)
    try:
        await gateway.start()
        print(_banner(settings, state, runtimes), flush=True)
        await wait_for_stop_signal()
        await gateway.drain()
    finally:
        await gateway.close()
        stop_process(consumer, timeout=10)
        await runtime_runner.cleanup()
        await trigger_dev_runner.cleanup()


def run_dev(settings: Settings, data_dir_arg: str) -> None:
    """Start everything the embedded default needs and serve until interrupted."""
    data_dir = Path(data_dir_arg).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    servers: list[EmbeddedPostgres | EmbeddedRedis] = []
    try:
        database_url = settings.database_url
        if not database_url:
            pg = EmbeddedPostgres(data_dir / "postgres")
            servers.append(pg)
            database_url = pg.start()
        redis_url = settings.redis_url
        if not redis_url:
            redis = EmbeddedRedis(data_dir / "redis")
            servers.append(redis)
            redis_url = redis.start()
        settings = dataclasses.replace(
            settings,
            # Uploaded input files live beside the demo's database unless told otherwise.
            blob_dir=os.environ.get("BLOB_DIR") or str(data_dir / "blobs"),
            # Ctrl-C stops a dev server at once unless a pre-stop delay was asked for.
            drain_pre_stop_s=settings.drain_pre_stop_s if "DRAIN_PRE_STOP_S" in os.environ else 0,
            drain_idle_close_s=(
                settings.drain_idle_close_s if "DRAIN_IDLE_CLOSE_S" in os.environ else 0
            ),
            database_url=database_url,
            redis_url=redis_url,
            secret_key=settings.secret_key or _persistent_secret(data_dir, "secret_key"),
            admin_token=settings.admin_token or _persistent_secret(data_dir, "admin_token"),
        )
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_all(settings, data_dir))
    finally:
        for server in reversed(servers):
            server.stop()


class DevCommand:
    """``agent-gateway dev``, registered through the ``agent_gateway.commands`` entry point."""

    name = "dev"
    help = "the embedded default: databases, demo runtime, gateway"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the command's options."""
        parser.add_argument(
            "--data-dir", default=".data", help="where embedded data lives (reused)"
        )

    def run(self, settings: Settings, args: argparse.Namespace) -> None:
        """Run the embedded default until interrupted."""
        run_dev(settings, args.data_dir)


DEV_COMMAND = DevCommand()
