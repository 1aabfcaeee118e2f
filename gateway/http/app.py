"""The application factory: pools and clients live in ``cleanup_ctx``, routes in handlers."""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware
from opentelemetry.instrumentation.aiohttp_client import create_trace_config
from opentelemetry.instrumentation.aiohttp_server import (
    AioHttpServerInstrumentor,
    create_aiohttp_middleware,
)

from adapters.n8n import N8nAdapter
from adapters.trigger_dev import TriggerDevAdapter
from gateway.admin.service import AdminService
from gateway.background import BackgroundTasks
from gateway.execute.frames import ExecutionFeeds
from gateway.execute.input_files import FileService
from gateway.execute.large_bodies import LargeBodySlots
from gateway.execute.service import ExecuteService
from gateway.http.app_keys import (
    ADMIN_SERVICE,
    BACKGROUND,
    BLOB_STORE,
    CALLBACK_SERVICE,
    CREDENTIAL_SERVICE,
    CREDENTIALS_TOKENS,
    DB_POOL,
    DEPENDENCIES,
    DOWNLOAD_SERVICE,
    EXECUTE_SERVICE,
    EXECUTION_FEEDS,
    EXTERNAL_RUN_SERVICE,
    FILE_SERVICE,
    HTTP_SESSION,
    KEY_GUARD,
    LARGE_BODY_SLOTS,
    LIFECYCLE,
    LOOKUP_CACHE,
    METRICS,
    PACKAGE_SERVICE,
    RATE_LIMITER,
    REALTIME_FOLLOWER,
    RECORDER,
    REDIS,
    RUN_CREATION,
    RUN_LOOKUPS,
    RUN_TRANSITIONS,
    RUN_WAITERS,
    SETTINGS,
    TRACING,
    TRIGGER_SERVICE,
)
from gateway.http.handlers import admin, agent_runs, callbacks, credentials, docs, execute, health
from gateway.http.handlers.v0 import create_v0_app
from gateway.http.middleware import (
    errors_to_json,
    observe_requests,
    on_prepare,
    request_context,
)
from gateway.http.streaming.chunked import RecordingConnector
from gateway.ops.dependencies import DependencyMonitor
from gateway.ops.drain import Lifecycle
from gateway.ops.metrics import GatewayMetrics
from gateway.ops.tracing import setup_tracing
from gateway.packages.archive import Archiver
from gateway.packages.service import PackageService
from gateway.runs.callbacks import CallbackService
from gateway.runs.creation import RunCreation
from gateway.runs.downloads import DownloadService
from gateway.runs.external import ExternalRunService
from gateway.runs.lookups import RunLookups
from gateway.runs.poller import RunPoller
from gateway.runs.realtime import RealtimeFollower
from gateway.runs.recording import RunRecorder, RunTransitions
from gateway.runs.triggers import TriggerService
from gateway.runs.waits import RunWaiters
from gateway.security.cipher import CredentialCipher
from gateway.security.credentials import CredentialService
from gateway.security.key_guard import KeyGuard
from gateway.security.keyring import key_ring
from gateway.security.ratelimit import RateLimiter
from gateway.security.runtime_secrets import RuntimeSecrets
from gateway.security.signing import UrlSigner
from gateway.security.tokens import CredentialsTokens
from gateway.settings import Settings
from gateway.storage.blobs import open_blob_store
from store.announcements import terminal_channel
from store.event_buffer import EventBuffer
from store.execution_frames import FrameLog
from store.lookup_cache import LookupCache
from store.migrate import check_schema
from store.pool import create_pool
from store.redis_client import connect_redis

log = structlog.get_logger(__name__)

_BACKGROUND_DRAIN_S = 5.0
# Redis connections per replica, and how long a request may wait for one of them.
_REDIS_CONNECTIONS = 100
_REDIS_CONNECTION_WAIT_S = 5.0
# On a Redis Cluster, connections per node: a command past them fails at once (no waiting pool).
_REDIS_CLUSTER_NODE_CONNECTIONS = 400
# A poll in hand when the gateway stops is given this long to finish and be recorded.
_POLLER_STOP_S = 5.0
# A background loop told to stop (a feed's long-poll, the cache's listener) is waited for this long.
_LOOP_STOP_S = 5.0
# Handlers aiohttp has cancelled are waited for this long to finish unwinding (see
# _handlers_unwound) before anything they use is closed.
_UNWIND_S = 5.0


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pool = await create_pool(
        settings.database_url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        acquire_timeout_s=settings.db_pool_acquire_timeout_s,
    )
    try:
        # Before anything listens: code newer than its schema would fail request by request.
        await check_schema(pool)
    except BaseException:
        await pool.close()
        raise
    app[DB_POOL] = pool
    yield
    await pool.close()


async def _lookup_cache(app: web.Application) -> AsyncIterator[None]:
    """The ingest key and agent caches, and the connection that keeps them true."""
    settings = app[SETTINGS]
    cache = LookupCache(
        app[DB_POOL],
        ttl_s=settings.auth_cache_ttl_s,
        size=settings.auth_cache_size,
        database_url=settings.database_url,
        reconnect_s=settings.auth_cache_reconnect_s,
    )
    app[LOOKUP_CACHE] = cache
    listening = asyncio.create_task(cache.listen(), name="lookup-cache-listener")
    yield
    listening.cancel()
    await asyncio.wait([listening], timeout=_LOOP_STOP_S)


async def _redis(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # A burst of requests waits for a free connection: redis-py's default pool answers "Too
    # many connections" past 100 at once, and a rate limiter that cannot ask Redis fails open.
    # redis-py's cluster client has no such waiting pool: there each node gets a wider bound
    # (store/redis_client.py).
    client = connect_redis(
        settings.redis_url,
        cluster=settings.redis_cluster,
        max_connections=(
            _REDIS_CLUSTER_NODE_CONNECTIONS if settings.redis_cluster else _REDIS_CONNECTIONS
        ),
        wait_for_connection_s=_REDIS_CONNECTION_WAIT_S,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=15,
    )
    app[REDIS] = client
    yield
    await client.aclose()


async def _dependency_monitor(app: web.Application) -> AsyncIterator[None]:
    """PostgreSQL and Redis probed in the background into ``agent_gateway_dependency_up``.

    Each on a connection of the monitor's own, never the request pools': a burst of requests
    holding every pooled connection is not an outage."""
    gauge = app[METRICS].dependency_up
    settings = app[SETTINGS]
    monitor = DependencyMonitor(
        settings.database_url,
        settings.redis_url,
        redis_cluster=settings.redis_cluster,
        on_probe=lambda dependency, up: gauge.labels(dependency.value).set(up),
    )
    app[DEPENDENCIES] = monitor
    probing = asyncio.create_task(
        monitor.run(settings.dependency_probe_interval_s), name="dependency-monitor"
    )
    yield
    probing.cancel()
    await asyncio.wait([probing], timeout=_LOOP_STOP_S)
    await monitor.close()


async def _tracing(app: web.Application) -> AsyncIterator[None]:
    """First in, last out: spans still held are exported once everything else has stopped."""
    yield
    tracing = app[TRACING]
    if tracing is not None:
        # The exporter posts from its own thread; the loop keeps serving other apps meanwhile.
        await asyncio.to_thread(tracing.shutdown)


async def _http_session(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    trace_configs = []
    if app[TRACING] is not None:
        # A client span per runtime call, its traceparent injected into the call's headers.
        trace_configs.append(create_trace_config())
    session = aiohttp.ClientSession(
        trace_configs=trace_configs,
        # Bytes pass through untouched: never decompress, never ask for compression ourselves.
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding",),
        read_bufsize=settings.stream_read_buffer,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        # No overall bound, one per runtime host: a slow runtime cannot take every socket, and
        # a call past the bound waits for a connection within its request's window.
        connector=RecordingConnector(
            limit=0,
            limit_per_host=settings.runtime_max_connections_per_host,
            enable_cleanup_closed=True,
        ),
    )
    app[HTTP_SESSION] = session
    yield
    await session.close()


async def _services(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    session = app[HTTP_SESSION]
    metrics = app[METRICS]
    background = BackgroundTasks()
    waiters = RunWaiters(
        app[REDIS],
        app[DB_POOL],
        channel=terminal_channel(settings.events_stream),
        recheck_s=settings.wait_recheck_s,
        observe_read=metrics.observe_wait_read,
    )
    metrics.run_waits.set_function(lambda: len(waiters))
    recorder = RunRecorder(
        app[DB_POOL],
        EventBuffer(
            app[REDIS],
            settings.events_stream,
            settings.events_partitions,
            max_per_partition=settings.events_buffer_max_per_partition,
        ),
        waiters,
        observe=metrics.observe_event,
    )
    # Each runtime call opens the agent's sealed runtime secrets for itself, in memory only.
    open_secrets = RuntimeSecrets(CredentialCipher(key_ring(settings))).opener()
    trigger_dev = TriggerDevAdapter(
        session,
        max_result_bytes=settings.max_result_body,
        run_tag=settings.trigger_dev_run_tag,
        feed_timeout_s=settings.trigger_dev_realtime_timeout_s,
        open_secrets=open_secrets,
    )
    adapters = metrics.metered_adapters(
        {
            N8nAdapter.kind: N8nAdapter(
                session, max_result_bytes=settings.max_result_body, open_secrets=open_secrets
            ),
            TriggerDevAdapter.kind: trigger_dev,
        }
    )
    tokens = CredentialsTokens(key_ring(settings), ttl_s=settings.credentials_token_ttl_s)
    lookups = RunLookups(
        settings=settings, pool=app[DB_POOL], adapters=adapters, cache=app[LOOKUP_CACHE]
    )
    creation = RunCreation(settings=settings, pool=app[DB_POOL], tokens=tokens)
    transitions = RunTransitions(pool=app[DB_POOL], recorder=recorder, background=background)
    realtime: RealtimeFollower | None = None
    if settings.trigger_dev_realtime:
        realtime = app[REALTIME_FOLLOWER] = RealtimeFollower(
            app[DB_POOL],
            transitions,
            trigger_dev,
            adapters,
            kind=TriggerDevAdapter.kind,
            discover_s=settings.trigger_dev_discover_s,
        )
        metrics.trigger_dev_feeds_up.set_function(lambda: app[REALTIME_FOLLOWER].feeds_up)
    poller = RunPoller(
        app[DB_POOL],
        transitions,
        adapters,
        tick_s=settings.follow_tick_s,
        lease_s=settings.follow_lease_s,
        realtime=realtime,
        fallback_s=settings.trigger_dev_realtime_fallback_s,
    )
    app[BACKGROUND] = background
    app[RECORDER] = recorder
    app[RATE_LIMITER] = RateLimiter(
        app[REDIS], fail_open=settings.rate_limit_fail_open, observe=metrics.observe_rate_limit
    )
    app[KEY_GUARD] = KeyGuard(
        # Failed attempts are counted only while Redis answers: an outage never locks callers out.
        RateLimiter(app[REDIS], fail_open=True, observe=metrics.observe_rate_limit),
        limit=settings.auth_failure_limit,
        window_s=settings.auth_failure_window_s,
        trusted_proxies=settings.trusted_proxies,
    )
    app[CREDENTIALS_TOKENS] = tokens
    app[RUN_LOOKUPS] = lookups
    app[RUN_CREATION] = creation
    app[RUN_TRANSITIONS] = transitions
    app[TRIGGER_SERVICE] = TriggerService(
        pool=app[DB_POOL],
        lookups=lookups,
        creation=creation,
        transitions=transitions,
        waiters=waiters,
        background=background,
        lifecycle=app[LIFECYCLE],
        realtime=realtime,
    )
    app[DOWNLOAD_SERVICE] = DownloadService(
        settings=settings,
        pool=app[DB_POOL],
        lookups=lookups,
        creation=creation,
        transitions=transitions,
        lifecycle=app[LIFECYCLE],
    )
    app[CALLBACK_SERVICE] = CallbackService(app[DB_POOL], transitions)
    app[EXTERNAL_RUN_SERVICE] = ExternalRunService(app[DB_POOL], transitions, tokens)
    app[CREDENTIAL_SERVICE] = CredentialService.for_settings(app[DB_POOL], settings)
    app[RUN_WAITERS] = waiters
    app[ADMIN_SERVICE] = AdminService(app[DB_POOL], key_ring(settings), app[LOOKUP_CACHE])
    listening = asyncio.create_task(waiters.listen(), name="run-waiters")
    polling = asyncio.create_task(poller.run(), name="run-poller")
    feeds = None if realtime is None else asyncio.create_task(realtime.run(), name="realtime")
    yield
    if realtime is not None:
        # Cancels the held long-polls; the poller and other replicas' feeds cover the runs.
        realtime.stop()
    if feeds is not None:
        await asyncio.wait([feeds], timeout=_LOOP_STOP_S)
    poller.stop()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(polling), _POLLER_STOP_S)
    polling.cancel()
    await poller.release()
    # Failures recorded on behalf of callers who left must reach the store before pools close;
    # each is one statement, so a short bound suffices after the in-flight grace period.
    await background.drain(bound_s=_BACKGROUND_DRAIN_S)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(recorder.flush(), _BACKGROUND_DRAIN_S)
    # Nobody waits any more once requests and background work are done.
    listening.cancel()
    await asyncio.wait([listening, polling], timeout=_POLLER_STOP_S)


async def _execute(app: web.Application) -> AsyncIterator[None]:
    """The blob store and what workflow execute builds on it."""
    settings = app[SETTINGS]
    async with open_blob_store(settings) as blobs:
        app[BLOB_STORE] = blobs
        files = FileService(
            app[DB_POOL],
            blobs,
            UrlSigner(key_ring(settings), purpose="input-files"),
            public_base_url=settings.public_base_url,
            url_ttl_s=settings.file_url_ttl_s,
        )
        app[FILE_SERVICE] = files
        app[EXECUTE_SERVICE] = ExecuteService(
            settings=settings,
            pool=app[DB_POOL],
            lookups=app[RUN_LOOKUPS],
            creation=app[RUN_CREATION],
            transitions=app[RUN_TRANSITIONS],
            triggers=app[TRIGGER_SERVICE],
            waiters=app[RUN_WAITERS],
            files=files,
            background=app[BACKGROUND],
        )
        app[LARGE_BODY_SLOTS] = LargeBodySlots(settings.execute_max_large_bodies)
        app[EXECUTION_FEEDS] = ExecutionFeeds(
            settings=settings,
            pool=app[DB_POOL],
            frame_log=FrameLog(
                app[REDIS],
                retention_s=settings.execute_stream_retention_s,
                max_frames=settings.execute_stream_max_frames,
            ),
            background=app[BACKGROUND],
        )
        yield


async def _packages(app: web.Application) -> AsyncIterator[None]:
    """Job download packages (the /v0 API): ZIPs streamed from the blob store."""
    settings = app[SETTINGS]
    archiver = Archiver(read_timeout_s=settings.stream_idle_timeout_s)
    app[PACKAGE_SERVICE] = PackageService(
        app[DB_POOL],
        app[BLOB_STORE],
        UrlSigner(key_ring(settings), purpose="job-packages"),
        archiver,
        public_base_url=settings.public_base_url,
        url_ttl_s=settings.package_url_ttl_s,
        lookups=app[LOOKUP_CACHE],
    )
    yield
    archiver.close()


async def _handlers_unwound(app: web.Application) -> AsyncIterator[None]:
    """On the way out, wait until every handler has returned, first of all the cleanups.

    aiohttp cancels the handlers still running when it shuts down and waits for them, but a
    cancelled handler may take a few more loop turns to unwind (a download whose copy runs in
    a thread of its own waits for the thread to let go of its sockets), and only then starts
    recording why its run ended. Background work and pools are closed after that record has
    been handed to them, not before.
    """
    yield
    lifecycle = app[LIFECYCLE]
    if not await lifecycle.wait_idle(_UNWIND_S):
        log.warning("handlers_still_running_at_cleanup", in_flight=lifecycle.in_flight)


async def _close_after_answer_while_draining(
    request: web.Request, response: web.StreamResponse
) -> None:
    # A draining replica tells the load balancer, on every answer, not to reuse the connection:
    # it closes it after the answer, never under a request the balancer is about to send.
    # config_dict: the /v0 sub-application's requests see the main application's lifecycle.
    if request.config_dict[LIFECYCLE].draining:
        response.force_close()
        # aiohttp has already chosen the headers when this signal runs: without this line the
        # connection would close after the answer without saying so, and the balancer would
        # send its next request into the closing socket.
        response.headers[hdrs.CONNECTION] = "close"


async def _start_draining(app: web.Application) -> None:
    app[LIFECYCLE].draining = True
    app[METRICS].draining.set(1)


def _server_span_middleware() -> Middleware:
    """The aiohttp server instrumentation's middleware, for the gateway's application alone.

    Its instrumentor sets up the middleware's module state (excluded URLs, the semantic
    conventions' mode, its meters) and swaps ``web.Application`` for a subclass that adds the
    middleware to every application the process creates (the consumer's monitor, a test's fake
    runtime): the state is kept, the swap undone, and the middleware added here only.
    """
    instrumentor = AioHttpServerInstrumentor()
    with warnings.catch_warnings():
        # That subclass, which aiohttp discourages; never used (the swap is undone at once).
        warnings.filterwarnings("ignore", "Inheritance class", DeprecationWarning)
        instrumentor.instrument()
    instrumentor.uninstrument()
    middleware: Middleware = create_aiohttp_middleware()
    return middleware


def create_app(settings: Settings) -> web.Application:
    """Build the gateway application for ``settings``."""
    # Tracing, when the standard OTEL_* variables turn it on (gateway/ops/tracing.py): the
    # server span, continuing the caller's traceparent, encloses everything else.
    tracing = setup_tracing()
    middlewares = [request_context, observe_requests, errors_to_json]
    if tracing is not None:
        middlewares.insert(0, _server_span_middleware())
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_request_body)
    app[TRACING] = tracing
    app[SETTINGS] = settings
    app[LIFECYCLE] = Lifecycle()
    app[METRICS] = GatewayMetrics(
        pool=lambda: app.get(DB_POOL), lookups=lambda: app.get(LOOKUP_CACHE)
    )
    app.on_shutdown.append(_start_draining)
    # Order matters: cleanup runs in reverse, so services drain before pools close.
    app.cleanup_ctx.extend(
        [
            _tracing,
            _database,
            _lookup_cache,
            _redis,
            _dependency_monitor,
            _http_session,
            _services,
            _execute,
            _packages,
            _handlers_unwound,
        ]
    )
    app.on_response_prepare.append(on_prepare)
    app.on_response_prepare.append(_close_after_answer_while_draining)
    app.router.add_routes(health.routes)
    app.router.add_routes(agent_runs.routes)
    app.router.add_routes(callbacks.routes)
    app.router.add_routes(credentials.routes)
    app.router.add_routes(admin.routes)
    app.router.add_routes(execute.routes)
    app.router.add_routes(docs.routes)
    app.add_subapp("/v0", create_v0_app())
    return app
