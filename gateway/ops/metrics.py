"""Prometheus metrics of one gateway application, in a registry of its own.

Each application gets its own ``CollectorRegistry`` (tests build many applications in one
process, and the default global registry refuses a second metric of the same name). Labels
stay bounded: route templates rather than paths, bucket classes rather than agents, runtime
kinds rather than URLs, and never a run id.
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any, ClassVar

import aiohttp
import asyncpg
from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from adapters.base import (
    ChunkStream,
    Invocation,
    RunResult,
    RuntimeAdapter,
    RuntimeRefused,
    RuntimeRetryLater,
    RuntimeTimeout,
    RuntimeUnavailable,
    RuntimeUnsupported,
    TriggerPayload,
)
from gateway.ops import tracing
from store.enums import RuntimeKind
from store.lookup_cache import LookupCache

# Requests may be held for the whole wait window (up to the 600 s ceiling).
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip

# Run-event recording outcomes (reported by ``gateway.runs.recording.RunRecorder``).
EVENT_VIA_DATABASE = "database"
EVENT_VIA_BUFFER = "buffer"
EVENT_REFUSED = "refused"
EVENT_DATABASE_FAILED = "database_failed"
EVENT_FAILED = "failed"


class PoolCollector(Collector):
    """``<prefix>_db_pool_connections{state}`` (in use, idle) and the pool's capacity,
    ``<prefix>_db_pool_max_connections``, read at scrape time from an asyncpg pool (none
    before the pool is opened). Capacity is a gauge of its own, so that summing the states is
    the connections open and ``in_use / max`` is a plain division."""

    def __init__(self, prefix: str, pool: Callable[[], asyncpg.Pool | None]) -> None:
        self._name = f"{prefix}_db_pool_connections"
        self._max_name = f"{prefix}_db_pool_max_connections"
        self._pool = pool

    def collect(self) -> Iterator[Metric]:
        """The connections by state, and the maximum."""
        family = GaugeMetricFamily(
            self._name, "Database pool connections by state (in_use, idle)", labels=["state"]
        )
        capacity = GaugeMetricFamily(
            self._max_name, "Most connections the database pool opens (its max_size)"
        )
        pool = self._pool()
        if pool is not None:
            size, idle = pool.get_size(), pool.get_idle_size()
            family.add_metric(["in_use"], size - idle)
            family.add_metric(["idle"], idle)
            capacity.add_metric([], pool.get_max_size())
        yield family
        yield capacity


def installed_version() -> str:
    """This package's version from its metadata (``unknown`` when it is not installed)."""
    try:
        return version("agent-gateway")
    except PackageNotFoundError:
        return "unknown"


def build_info(registry: CollectorRegistry) -> Gauge:
    """``agent_gateway_build_info{version,python}``, always 1: which release a process runs."""
    gauge = Gauge(
        "agent_gateway_build_info",
        "1; the labels say which release (package version) and Python this process runs",
        ["version", "python"],
        registry=registry,
    )
    gauge.labels(installed_version(), platform.python_version()).set(1)
    return gauge


class LookupCacheCollector(Collector):
    """``agent_gateway_lookup_cache_lookups_total{outcome}`` and
    ``agent_gateway_lookup_cache_listening``, read at scrape time from the key and agent
    cache (none before it exists)."""

    def __init__(self, cache: Callable[[], LookupCache | None]) -> None:
        self._cache = cache

    def collect(self) -> Iterator[Metric]:
        """The lookups by outcome, and whether the cache is serving."""
        lookups = CounterMetricFamily(
            "agent_gateway_lookup_cache_lookups",
            "Ingest key and agent lookups: hit (memory), miss (read, then kept) or bypassed "
            "(read: the listener was down or the cache is off)",
            labels=["outcome"],
        )
        listening = GaugeMetricFamily(
            "agent_gateway_lookup_cache_listening",
            "1 while the cache's invalidation listener is connected and the cache serves",
        )
        cache = self._cache()
        if cache is not None:
            lookups.add_metric(["hit"], cache.stats.hits)
            lookups.add_metric(["miss"], cache.stats.misses)
            lookups.add_metric(["bypassed"], cache.stats.bypassed)
            listening.add_metric([], 1 if cache.serving else 0)
        yield lookups
        yield listening


def new_registry() -> CollectorRegistry:
    """A registry with the process, platform and garbage-collector collectors, and
    ``agent_gateway_build_info``."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(GC_COLLECTOR)
    build_info(registry)
    return registry


def render(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The exposition body and its Content-Type, negotiated from the ``Accept`` header."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def dependency_gauge(registry: CollectorRegistry) -> Gauge:
    """``agent_gateway_dependency_up{dependency}``, which the gateway and the consumer both set."""
    return Gauge(
        "agent_gateway_dependency_up",
        "1 while the dependency (postgres, redis) answered this process's last probe",
        ["dependency"],
        registry=registry,
    )


class GatewayMetrics:
    """Everything the gateway counts; docs/operations.md lists them."""

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool | None] = lambda: None,
        lookups: Callable[[], LookupCache | None] = lambda: None,
    ) -> None:
        self.registry = new_registry()
        r = self.registry
        self.requests = Counter(
            "agent_gateway_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "agent_gateway_http_request_duration_seconds",
            "Time from the request reaching the application to its handler finishing "
            "(the whole body for streamed responses)",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_byte = Histogram(
            "agent_gateway_http_time_to_first_byte_seconds",
            "Time from the request reaching the application to its response headers being "
            "sent (for a download or a stream, when its body begins)",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests_in_flight = Gauge(
            "agent_gateway_http_requests_in_flight", "Requests being handled", registry=r
        )
        self.streams_in_flight = Gauge(
            "agent_gateway_streams_in_flight",
            "Streamed responses (downloads, event streams) being sent",
            ["route"],
            registry=r,
        )
        self.streamed_bytes = Counter(
            "agent_gateway_streamed_bytes",
            "Body bytes of streamed responses sent to callers",
            ["route"],
            registry=r,
        )
        self.rate_limit_decisions = Counter(
            "agent_gateway_rate_limit_decisions",
            "Rate-limit decisions by bucket class (sync, trigger, ...) and decision "
            "(allowed, limited, unavailable_allowed, unavailable_refused)",
            ["bucket", "decision"],
            registry=r,
        )
        self.runtime_calls = Histogram(
            "agent_gateway_runtime_call_duration_seconds",
            "Calls to runtimes by runtime kind, operation and outcome",
            ["runtime", "operation", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.events_published = Counter(
            "agent_gateway_run_events_published",
            "Run events recorded, by type and path (database, or buffer when PostgreSQL was away)",
            ["type", "via"],
            registry=r,
        )
        self.events_refused = Counter(
            "agent_gateway_run_events_refused",
            "Run events refused because the run had already ended",
            ["type"],
            registry=r,
        )
        self.events_failed = Counter(
            "agent_gateway_run_event_failures",
            "Run events that could not be recorded: stage database (held in the Redis buffer "
            "instead) or buffer (the event was lost and the request failed)",
            ["type", "stage"],
            registry=r,
        )
        self.draining = Gauge(
            "agent_gateway_draining", "1 while the process drains after SIGTERM", registry=r
        )
        self.run_waits = Gauge(
            "agent_gateway_run_waits_in_flight",
            "Requests of this process waiting for a run to end (trigger-and-wait, job waits)",
            registry=r,
        )
        self.run_wait_reads = Counter(
            "agent_gateway_run_wait_reads",
            "Statements reading which waited runs have ended, by reason: interval (all of "
            "them, once per WAIT_RECHECK_S) or announced (runs another process ended)",
            ["reason"],
            registry=r,
        )
        self.run_wait_runs_read = Counter(
            "agent_gateway_run_wait_runs_read",
            "Runs named by those statements, by reason",
            ["reason"],
            registry=r,
        )
        self.trigger_dev_feeds_up = Gauge(
            "agent_gateway_trigger_dev_feeds_up",
            "Trigger.dev realtime feeds up on this replica (one per environment)",
            registry=r,
        )
        self.dependency_up = dependency_gauge(r)
        r.register(PoolCollector("agent_gateway", pool))
        r.register(LookupCacheCollector(lookups))

    def observe_rate_limit(self, bucket: str, decision: str) -> None:
        """Count one decision; ``bucket`` is a bucket key whose last part is its class."""
        self.rate_limit_decisions.labels(bucket.rsplit(":", 1)[-1], decision).inc()

    def observe_wait_read(self, reason: str, runs: int) -> None:
        """Count one statement that read ``runs`` waited runs' ends."""
        self.run_wait_reads.labels(reason).inc()
        self.run_wait_runs_read.labels(reason).inc(runs)

    def observe_event(self, event_type: str, outcome: str) -> None:
        """Count what became of one run event (see the ``EVENT_*`` outcomes)."""
        if outcome in (EVENT_VIA_DATABASE, EVENT_VIA_BUFFER):
            self.events_published.labels(event_type, outcome).inc()
        elif outcome == EVENT_REFUSED:
            self.events_refused.labels(event_type).inc()
        elif outcome == EVENT_DATABASE_FAILED:
            self.events_failed.labels(event_type, "database").inc()
        else:
            self.events_failed.labels(event_type, "buffer").inc()

    def metered_adapters(
        self, adapters: Mapping[RuntimeKind, RuntimeAdapter]
    ) -> dict[str, RuntimeAdapter]:
        """``adapters`` with every call timed into ``runtime_calls``."""
        return {kind: _metered(adapter, self.runtime_calls) for kind, adapter in adapters.items()}


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    for kind, name in (
        (RuntimeTimeout, "timeout"),
        (RuntimeUnavailable, "unavailable"),
        (RuntimeRefused, "refused"),
        (RuntimeRetryLater, "retry_later"),
        (RuntimeUnsupported, "unsupported"),
    ):
        if isinstance(exc, kind):
            return name
    # CancelledError: the caller left or the process is stopping.
    return "error" if isinstance(exc, Exception) else "cancelled"


class _MeteredAdapter:
    """A runtime adapter whose calls are timed; behaviour is the wrapped adapter's."""

    kind: ClassVar[RuntimeKind]
    followed: ClassVar[bool]
    streams: ClassVar[bool]

    def __init__(self, inner: RuntimeAdapter, histogram: Histogram) -> None:
        self._inner = inner
        self._histogram = histogram

    @contextlib.contextmanager
    def _timed(self, operation: str, payload: TriggerPayload | None = None) -> Iterator[None]:
        started = time.monotonic()
        failure: BaseException | None = None
        # The runtime call's span (gateway/ops/tracing.py): a no-op one when tracing is off.
        attributes = {"agent_gateway.runtime.kind": str(self.kind)}
        if payload is not None:
            attributes["agent_gateway.run.id"] = str(payload.run_id)
        try:
            with tracing.span(f"runtime {operation}", attributes=attributes):
                yield
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self._histogram.labels(self.kind, operation, _outcome(failure)).observe(
                time.monotonic() - started
            )

    def acknowledges(self, runtime: Mapping[str, Any], status: int, body: Any) -> bool:
        """The wrapped adapter's answer (no call to time)."""
        return self._inner.acknowledges(runtime, status, body)

    async def open_stream(
        self, runtime: Mapping[str, Any], payload: TriggerPayload, *, wait_s: float
    ) -> ChunkStream:
        """Time until the runtime's streamed answer began."""
        with self._timed("open_stream", payload):
            return await self._inner.open_stream(runtime, payload, wait_s=wait_s)

    async def open_download(
        self,
        runtime: Mapping[str, Any],
        payload: TriggerPayload,
        *,
        wait_s: float,
        accept_encoding: str | None,
    ) -> aiohttp.ClientResponse:
        """Time until the runtime's response headers arrived."""
        with self._timed("open_download", payload):
            return await self._inner.open_download(
                runtime, payload, wait_s=wait_s, accept_encoding=accept_encoding
            )

    async def invoke(
        self, runtime: Mapping[str, Any], payload: TriggerPayload, *, wait_s: float
    ) -> Invocation:
        """Time the invocation, answer included."""
        with self._timed("invoke", payload):
            return await self._inner.invoke(runtime, payload, wait_s=wait_s)

    async def poll(self, runtime: Mapping[str, Any], runtime_run_id: str) -> RunResult:
        """Time one poll."""
        with self._timed("poll"):
            return await self._inner.poll(runtime, runtime_run_id)

    async def cancel(self, runtime: Mapping[str, Any], runtime_run_id: str) -> None:
        """Time one cancel request."""
        with self._timed("cancel"):
            await self._inner.cancel(runtime, runtime_run_id)


def _as_adapter(metered: _MeteredAdapter) -> RuntimeAdapter:
    # Makes mypy check that the wrapper still has every method of the Protocol.
    return metered


def _metered(adapter: RuntimeAdapter, histogram: Histogram) -> RuntimeAdapter:
    # kind, followed and streams are class attributes of the Protocol: a subclass per runtime kind
    # carries them as such.
    cls = type(
        f"Metered{type(adapter).__name__}",
        (_MeteredAdapter,),
        {"kind": adapter.kind, "followed": adapter.followed, "streams": adapter.streams},
    )
    return _as_adapter(cls(adapter, histogram))
