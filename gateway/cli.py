"""The ``agent-gateway`` console script: dev, serve, consume, migrate and admin."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from importlib.metadata import entry_points
from typing import Any, Protocol

import redis.asyncio as aioredis

from gateway.admin.service import AdminService
from gateway.errors import ApiError
from gateway.http import server
from gateway.http.app import create_app
from gateway.http.monitor import serve_monitor
from gateway.http.views import agent_view, created_agent_view
from gateway.ops.consumer_monitor import ConsumerMonitor
from gateway.ops.log_config import configure_logging
from gateway.security.credentials import CredentialService
from gateway.settings import Settings, SettingsError
from gateway.storage.blobs import BlobStoreError
from store.consumer import StoreConsumer
from store.migrate import SchemaBehind, check_schema, migrate_url, migration_status_url
from store.pool import create_pool

# Commands installed by other distributions (the dev kit's ``dev``), so this package never
# imports dev-only code.
COMMANDS_GROUP = "agent_gateway.commands"


class Command(Protocol):
    """A subcommand contributed through the ``agent_gateway.commands`` entry-point group."""

    name: str
    help: str

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the command's options to its parser."""

    def run(self, settings: Settings, args: argparse.Namespace) -> None:
        """Carry the command out."""


def _plugin_commands() -> dict[str, Command]:
    commands: dict[str, Command] = {}
    for entry in entry_points(group=COMMANDS_GROUP):
        command: Command = entry.load()
        commands[command.name] = command
    return commands


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _require(settings: Settings, *names: str) -> None:
    missing = [n for n in names if not getattr(settings, n.lower())]
    if missing:
        sys.exit(f"agent-gateway: set {', '.join(missing)} (or use 'agent-gateway dev')")


def serve(settings: Settings) -> None:
    """Run the gateway alone until SIGTERM/SIGINT, then drain it (gateway/http/server.py)."""
    _require(settings, "DATABASE_URL", "REDIS_URL", "SECRET_KEY")
    _install_uvloop()
    try:
        asyncio.run(server.serve(create_app(settings), settings))
    except (BlobStoreError, SchemaBehind) as exc:
        # A misconfiguration an operator fixes from the message, not a crash to debug.
        sys.exit(f"agent-gateway: {exc}")


async def run_consumer(settings: Settings, *, name: str | None = None) -> None:
    """Run the store consumer until SIGTERM/SIGINT; the batch in hand is finished first."""
    redis = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=2)
    pool = await create_pool(
        settings.database_url, min_size=1, max_size=settings.consumer_db_pool_max_size
    )
    consumer = StoreConsumer(
        redis,
        pool,
        stream=settings.events_stream,
        group=settings.events_group,
        name=name,
        reclaim_idle_ms=int(settings.consumer_reclaim_idle_s * 1000),
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, consumer.stop)
    try:
        await check_schema(pool)
        async with contextlib.AsyncExitStack() as stack:
            if settings.consumer_port:
                await stack.enter_async_context(
                    serve_monitor(
                        ConsumerMonitor(consumer, redis, pool),
                        settings.consumer_host,
                        settings.consumer_port,
                    )
                )
            await consumer.run()
    finally:
        await pool.close()
        await redis.aclose()


def _admin_parser(sub: Any) -> None:
    admin = sub.add_parser("admin", help="operator actions (same as the /admin API)")
    actions = admin.add_subparsers(dest="action", required=True)
    org = actions.add_parser("create-org", help="create an organisation")
    org.add_argument("name")
    key = actions.add_parser("create-key", help="create an ingest key for an organisation")
    key.add_argument("org_id", type=uuid.UUID)
    revoke = actions.add_parser("revoke-key", help="revoke one of an organisation's ingest keys")
    revoke.add_argument("org_id", type=uuid.UUID)
    revoke.add_argument("key_id", type=uuid.UUID)
    user = actions.add_parser("create-user", help="add a member to an organisation")
    user.add_argument("org_id", type=uuid.UUID)
    user.add_argument("email")
    agent = actions.add_parser("create-agent", help="create an agent from a JSON body")
    agent.add_argument("org_id", type=uuid.UUID)
    agent.add_argument("json", help="the body of POST /admin/orgs/{orgId}/agents")
    credential = actions.add_parser(
        "create-credential", help="store a credential (sealed) from a JSON body"
    )
    credential.add_argument("org_id", type=uuid.UUID)
    credential.add_argument("json", help="the body of POST /admin/orgs/{orgId}/credentials")
    update = actions.add_parser("update-agent", help="change an agent from a JSON body")
    update.add_argument("agent_id", type=int)
    update.add_argument("json", help="the body of PATCH /admin/agents/{agentId}")


async def run_admin(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Carry out one admin action against the database and return its JSON answer."""
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    service = AdminService(pool, settings.secret_key)
    credentials = CredentialService.for_settings(pool, settings)

    # The console prints what the /admin API answers, shaped by the same views.
    async def create_agent() -> dict[str, Any]:
        return created_agent_view(await service.create_agent(args.org_id, json.loads(args.json)))

    async def update_agent() -> dict[str, Any]:
        return agent_view(await service.update_agent(args.agent_id, json.loads(args.json)))

    async def revoke_key() -> dict[str, Any]:
        await service.revoke_ingest_key(args.org_id, args.key_id)
        return {"id": str(args.key_id), "revoked": True}

    calls: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "create-org": lambda: service.create_org({"name": args.name}),
        "create-key": lambda: service.create_ingest_key(args.org_id),
        "revoke-key": revoke_key,
        "create-user": lambda: service.create_user(args.org_id, {"email": args.email}),
        "create-agent": create_agent,
        "update-agent": update_agent,
        "create-credential": lambda: credentials.create(args.org_id, json.loads(args.json)),
    }
    try:
        return await calls[args.action]()
    finally:
        await pool.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the console script."""
    parser = argparse.ArgumentParser(prog="agent-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    plugins = _plugin_commands()
    for command in plugins.values():
        command.configure(sub.add_parser(command.name, help=command.help))
    sub.add_parser("serve", help="run the gateway")
    consume = sub.add_parser("consume", help="run the store consumer")
    consume.add_argument("--name", help="consumer name (default: host-pid)")
    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.add_argument(
        "--status",
        action="store_true",
        help="print applied, pending and unknown migrations; exit 1 if any is pending",
    )
    _admin_parser(sub)
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        sys.exit(f"agent-gateway: {exc}")
    configure_logging(settings.log_level)
    if args.command in plugins:
        plugins[args.command].run(settings, args)
    elif args.command == "serve":
        serve(settings)
    elif args.command == "consume":
        _require(settings, "DATABASE_URL", "REDIS_URL")
        _install_uvloop()
        try:
            asyncio.run(run_consumer(settings, name=args.name))
        except SchemaBehind as exc:
            sys.exit(f"agent-gateway: {exc}")
    elif args.command == "migrate":
        _require(settings, "DATABASE_URL")
        if args.status:
            status = asyncio.run(migration_status_url(settings.database_url))
            print(json.dumps(status.as_json()))
            if not status.up_to_date:
                sys.exit(1)
        else:
            applied = asyncio.run(migrate_url(settings.database_url))
            print(json.dumps({"applied": applied}))
    elif args.command == "admin":
        _require(settings, "DATABASE_URL", "SECRET_KEY")
        try:
            print(json.dumps(asyncio.run(run_admin(settings, args)), indent=2))
        except ApiError as exc:
            print(json.dumps({"error": exc.message, **exc.extra}, indent=2), file=sys.stderr)
            sys.exit(1)
        except json.JSONDecodeError as exc:
            sys.exit(f"agent-gateway: the JSON argument is not valid JSON: {exc}")


if __name__ == "__main__":
    main()
