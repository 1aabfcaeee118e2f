"""The ``agent-gateway`` console script: dev, serve, consume, migrate and admin."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import traceback
import uuid
from collections.abc import Awaitable, Callable, Sequence
from importlib.metadata import PackageNotFoundError, entry_points, version
from typing import Any, NoReturn, Protocol

import asyncpg
from redis.exceptions import RedisError

from gateway.admin.service import AdminService
from gateway.errors import ApiError
from gateway.http import server
from gateway.http.app import create_app
from gateway.http.monitor import serve_monitor
from gateway.http.views import (
    agent_view,
    created_agent_view,
    created_credential_view,
    created_ingest_key_view,
    created_org_view,
    created_user_view,
    credential_info_view,
    ingest_key_view,
    org_view,
)
from gateway.ops.consumer_monitor import ConsumerMonitor
from gateway.ops.heap import prepare_heap_for_work
from gateway.ops.log_config import configure_logging, log_failure
from gateway.ops.tracing import setup_tracing
from gateway.security.credentials import CredentialService
from gateway.security.keyring import key_ring
from gateway.settings import Settings, SettingsError
from gateway.storage.blobs import BlobStoreError, open_blob_store
from store.consumer import StoreConsumer
from store.event_buffer import EventBuffer
from store.migrate import SchemaBehind, check_schema, migrate_url, migration_status_url
from store.pool import create_pool
from store.redis_client import connect_redis
from store.retention import RetentionPolicy

# Commands installed by other distributions (the dev kit's ``dev``), so this package never
# imports dev-only code.
COMMANDS_GROUP = "agent_gateway.commands"

# What stops a process before it serves: a backend it cannot reach or log in to, a port it
# cannot bind, a setting it cannot use. An operator fixes these from one line; anything else is
# a bug, and keeps its traceback.
_START_FAILURES: tuple[type[BaseException], ...] = (
    SettingsError,
    BlobStoreError,
    SchemaBehind,
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    RedisError,
)


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
        raise SettingsError(f"set {', '.join(missing)} (or use 'agent-gateway dev')")


def serve(settings: Settings) -> None:
    """Run the gateway alone until SIGTERM/SIGINT, then drain it (gateway/http/server.py)."""
    _require(settings, "DATABASE_URL", "REDIS_URL", "SECRET_KEY")
    _install_uvloop()
    asyncio.run(server.serve(create_app(settings), settings))


async def run_consumer(settings: Settings, *, name: str | None = None) -> None:
    """Run the store consumer until SIGTERM/SIGINT; the batches in hand are finished first."""
    # Its asyncpg and Redis calls traced when the OTEL_* variables say so (gateway/ops/tracing.py).
    tracing = setup_tracing(service_name="agent-gateway-consumer")
    redis = connect_redis(settings.redis_url, cluster=settings.redis_cluster)
    pool = await create_pool(
        settings.database_url,
        min_size=1,
        max_size=settings.consumer_db_pool_max_size,
        acquire_timeout_s=settings.db_pool_acquire_timeout_s,
    )
    try:
        async with contextlib.AsyncExitStack() as stack:
            # Retention deletes the blobs of the runs and input files it deletes.
            blobs = await stack.enter_async_context(open_blob_store(settings))
            consumer = StoreConsumer(
                redis,
                pool,
                buffer=EventBuffer(redis, settings.events_stream, settings.events_partitions),
                name=name,
                poll_ms=settings.consumer_poll_ms,
                lease_s=settings.consumer_lease_s,
                retention=RetentionPolicy(
                    runs_days=settings.retention_runs_days,
                    input_files_days=settings.retention_input_files_days,
                    packages_days=settings.retention_packages_days,
                    limit=settings.retention_batch,
                ),
                blobs=blobs,
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, consumer.stop)
            await check_schema(pool)
            if settings.consumer_port:
                await stack.enter_async_context(
                    serve_monitor(
                        ConsumerMonitor(consumer, redis, pool, settings),
                        settings.consumer_host,
                        settings.consumer_port,
                    )
                )
            prepare_heap_for_work(settings.gc_young_threshold)
            await consumer.run()
    finally:
        await pool.close()
        await redis.aclose()
        if tracing is not None:
            await asyncio.to_thread(tracing.shutdown)


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
    actions.add_parser("list-orgs", help="list the organisations")
    keys = actions.add_parser(
        "list-keys", help="list an organisation's ingest keys (ids and prefixes, never the keys)"
    )
    keys.add_argument("org_id", type=uuid.UUID)
    agents = actions.add_parser("list-agents", help="list an organisation's agents")
    agents.add_argument("org_id", type=uuid.UUID)
    get_agent = actions.add_parser("get-agent", help="show one agent")
    get_agent.add_argument("agent_id", type=int)
    rotate = actions.add_parser(
        "rotate-agent-key", help="give an agent a new API key (shown once; the old one refused)"
    )
    rotate.add_argument("agent_id", type=int)
    actions.add_parser(
        "reseal",
        help="seal every stored secret again under the newest SECRET_KEY, and list the agents "
        "whose API key an older key derived",
    )
    creds = actions.add_parser(
        "list-credentials", help="list an organisation's credentials (never their data)"
    )
    creds.add_argument("org_id", type=uuid.UUID)
    rotate_credential = actions.add_parser(
        "rotate-credential", help="new data for a credential, same id"
    )
    rotate_credential.add_argument("org_id", type=uuid.UUID)
    rotate_credential.add_argument("credential_id", type=uuid.UUID)
    rotate_credential.add_argument("json", help="the body of PUT .../credentials/{id}/data")
    delete_credential = actions.add_parser("delete-credential", help="delete a credential")
    delete_credential.add_argument("org_id", type=uuid.UUID)
    delete_credential.add_argument("credential_id", type=uuid.UUID)


async def run_admin(
    settings: Settings, args: argparse.Namespace
) -> dict[str, Any] | list[dict[str, Any]]:
    """Carry out one admin action against the database and return its JSON answer."""
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    service = AdminService(pool, key_ring(settings))
    credentials = CredentialService.for_settings(pool, settings)

    # The console prints what the /admin API answers, shaped by the same views.
    async def create_agent() -> dict[str, Any]:
        return created_agent_view(await service.create_agent(args.org_id, json.loads(args.json)))

    async def update_agent() -> dict[str, Any]:
        return agent_view(await service.update_agent(args.agent_id, json.loads(args.json)))

    async def create_org() -> dict[str, Any]:
        return created_org_view(await service.create_org({"name": args.name}))

    async def create_key() -> dict[str, Any]:
        return created_ingest_key_view(await service.create_ingest_key(args.org_id))

    async def create_user() -> dict[str, Any]:
        return created_user_view(await service.create_user(args.org_id, {"email": args.email}))

    async def create_credential() -> dict[str, Any]:
        created = await credentials.create(args.org_id, json.loads(args.json))
        return created_credential_view(created)

    async def revoke_key() -> dict[str, Any]:
        await service.revoke_ingest_key(args.org_id, args.key_id)
        return {"id": str(args.key_id), "revoked": True}

    async def list_orgs() -> list[dict[str, Any]]:
        return [org_view(org) for org in await service.list_orgs()]

    async def list_keys() -> list[dict[str, Any]]:
        return [ingest_key_view(key) for key in await service.list_ingest_keys(args.org_id)]

    async def list_agents() -> list[dict[str, Any]]:
        return [agent_view(agent) for agent in await service.list_agents(args.org_id)]

    async def get_agent() -> dict[str, Any]:
        return agent_view(await service.get_agent(args.agent_id))

    async def rotate_agent_key() -> dict[str, Any]:
        return created_agent_view(await service.rotate_agent_key(args.agent_id))

    async def list_credentials() -> list[dict[str, Any]]:
        return [credential_info_view(info) for info in await credentials.list(args.org_id)]

    async def rotate_credential() -> dict[str, Any]:
        info = await credentials.rotate(args.org_id, args.credential_id, json.loads(args.json))
        return credential_info_view(info)

    async def reseal() -> dict[str, Any]:
        return {
            "key_id": key_ring(settings).primary_id,
            "credentials": await credentials.reseal(),
            "runtime_secrets": await service.reseal_runtime_secrets(),
            "agent_keys_to_rotate": await service.agents_on_old_keys(),
        }

    async def delete_credential() -> dict[str, Any]:
        await credentials.delete(args.org_id, args.credential_id)
        return {"id": str(args.credential_id), "deleted": True}

    calls: dict[str, Callable[[], Awaitable[dict[str, Any] | list[dict[str, Any]]]]] = {
        "create-org": create_org,
        "create-key": create_key,
        "revoke-key": revoke_key,
        "create-user": create_user,
        "create-agent": create_agent,
        "update-agent": update_agent,
        "create-credential": create_credential,
        "list-orgs": list_orgs,
        "list-keys": list_keys,
        "list-agents": list_agents,
        "get-agent": get_agent,
        "rotate-agent-key": rotate_agent_key,
        "reseal": reseal,
        "list-credentials": list_credentials,
        "rotate-credential": rotate_credential,
        "delete-credential": delete_credential,
    }
    try:
        return await calls[args.action]()
    finally:
        await pool.close()


def _installed_version() -> str:
    try:
        return version("agent-gateway")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _start_failure(exc: BaseException) -> BaseException | None:
    """The failure an operator can act on, also when a task group wrapped it."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _start_failure(inner)) is not None:
                return found
        return None
    return exc if isinstance(exc, _START_FAILURES) else None


def _dependency(exc: BaseException) -> str | None:
    """Which backend refused, when the error does not say (asyncpg's connection refused is a
    bare ``OSError``): the library it was raised in."""
    if isinstance(exc, RedisError):
        return "Redis"
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        return "PostgreSQL"
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if "/asyncpg/" in frame.filename:
            return "PostgreSQL"
        if "/redis/" in frame.filename:
            return "Redis"
    return None


def _fail(command: str, exc: BaseException) -> NoReturn:
    fields: dict[str, Any] = {"command": command, "error": str(exc) or type(exc).__name__}
    if isinstance(exc, OSError):
        fields["error"] = f"{type(exc).__name__}: {fields['error']}"
    if (dependency := _dependency(exc)) is not None:
        fields["dependency"] = dependency
    log_failure("start_failed", **fields)
    sys.exit(1)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the console script."""
    parser = argparse.ArgumentParser(prog="agent-gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=_installed_version())
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
        _fail(args.command, exc)
    configure_logging(settings.log_level)
    if args.command in plugins:
        plugins[args.command].run(settings, args)
        return
    try:
        _run(settings, args)
    except Exception as exc:
        if (failure := _start_failure(exc)) is None:
            raise
        _fail(args.command, failure)


def _run(settings: Settings, args: argparse.Namespace) -> None:
    if args.command == "serve":
        serve(settings)
    elif args.command == "consume":
        _require(settings, "DATABASE_URL", "REDIS_URL")
        _install_uvloop()
        asyncio.run(run_consumer(settings, name=args.name))
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
