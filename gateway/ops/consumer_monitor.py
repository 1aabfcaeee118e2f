"""What the store consumer reports about itself: its metrics registry and its liveness.

``gateway.http.monitor`` serves them as ``/metrics`` and ``/healthz``, the consumer's only HTTP
surface: it lets Prometheus see its lag and what it
applied, and lets an orchestrator restart a consumer whose loop has stopped turning.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator

import asyncpg
import structlog
from prometheus_client import Gauge
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from gateway.ops.dependencies import DependencyMonitor
from gateway.ops.metrics import PoolCollector, dependency_gauge, new_registry
from store.consumer import StoreConsumer
from store.redis_client import RedisClient

log = structlog.get_logger(__name__)

# A loop that has not turned for this long is stuck (it turns every second or so, and its
# slowest step is one bounded database statement).
STUCK_AFTER_S = 90.0
_LAG_PROBE_TIMEOUT_S = 1.0


class _StatsCollector(Collector):
    """The consumer's counters, read at scrape time."""

    def __init__(self, consumer: StoreConsumer) -> None:
        self._consumer = consumer

    def collect(self) -> Iterator[Metric]:
        """Events by outcome, and runs the reaper failed."""
        stats = self._consumer.stats
        events = CounterMetricFamily(
            "agent_gateway_store_events",
            "Run events handled by this consumer: applied (the run changed), duplicate "
            "(applied before), refused (the run had ended), poison (undecodable), reclaimed "
            "(taken over from a dead consumer)",
            labels=["outcome"],
        )
        for outcome, value in (
            ("applied", stats.applied),
            ("duplicate", stats.duplicates),
            ("refused", stats.refused),
            ("poison", stats.poison),
            ("reclaimed", stats.reclaimed),
        ):
            events.add_metric([outcome], value)
        yield events
        yield CounterMetricFamily(
            "agent_gateway_store_runs_reaped",
            "Runs failed by the reaper because their deadline passed",
            value=stats.reaped,
        )


class ConsumerMonitor:
    """Metrics and liveness of one store consumer process."""

    def __init__(self, consumer: StoreConsumer, redis: RedisClient, pool: asyncpg.Pool) -> None:
        self.consumer = consumer
        self._redis = redis
        self.registry = new_registry()
        self.registry.register(_StatsCollector(consumer))
        self.registry.register(PoolCollector("agent_gateway_store", lambda: pool))
        self.lag = Gauge(
            "agent_gateway_store_consumer_lag_events",
            "Events in the stream not yet delivered to the consumer group",
            registry=self.registry,
        )
        self.pending = Gauge(
            "agent_gateway_store_pending_events",
            "Events delivered to a consumer and not yet acknowledged",
            registry=self.registry,
        )
        self.oldest_age = Gauge(
            "agent_gateway_store_oldest_event_age_seconds",
            "Age of the oldest event still in the stream (0 when it is empty)",
            registry=self.registry,
        )
        dependency_up = dependency_gauge(self.registry)
        # Probed at each scrape: the consumer waits outages out, this says it is waiting.
        self.dependencies = DependencyMonitor(
            pool,
            redis,
            on_probe=lambda dependency, up: dependency_up.labels(dependency.value).set(up),
        )

    async def refresh(self) -> None:
        """Probe PostgreSQL and Redis; read the stream's backlog (NaN when Redis cannot say)."""
        await self.dependencies.probe()
        try:
            async with asyncio.timeout(_LAG_PROBE_TIMEOUT_S):
                lag, pending, age = await self._backlog()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("consumer_lag_unavailable", error=str(exc))
            lag = pending = age = math.nan
        self.lag.set(lag)
        self.pending.set(pending)
        self.oldest_age.set(age)

    async def _backlog(self) -> tuple[float, float, float]:
        stream, group = self.consumer.stream, self.consumer.group
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xlen(stream)
            pipe.xinfo_groups(stream)
            pipe.xrange(stream, count=1)
            length, groups, first = await pipe.execute(raise_on_error=False)
        if isinstance(length, Exception):
            raise length
        info = {}
        if not isinstance(groups, Exception):
            for entry in groups:
                name = entry.get("name")
                if (name.decode() if isinstance(name, bytes) else name) == group:
                    info = entry
        pending = int(info.get("pending") or 0)
        # Redis 7 reports the lag itself; before that, acknowledged entries are deleted, so
        # what is in the stream and not pending has not been delivered yet.
        lag = info.get("lag")
        lag = max(0, int(length) - pending) if lag is None else int(lag)
        age = 0.0
        if first and not isinstance(first, Exception):
            entry_id = first[0][0]
            ms = int((entry_id.decode() if isinstance(entry_id, bytes) else entry_id).split("-")[0])
            age = max(0.0, time.time() - ms / 1000)
        return float(lag), float(pending), age

    def health(self) -> tuple[bool, dict[str, object]]:
        """Whether the consumer loop is turning, and what the probe reports."""
        since = time.monotonic() - self.consumer.heartbeat
        alive = not self.consumer.stopping and since < STUCK_AFTER_S
        body: dict[str, object] = {
            "status": "ok" if alive else "unavailable",
            "consumer": self.consumer.name,
            "last_loop_s": round(since, 3),
        }
        if self.consumer.stopping:
            body["process"] = "stopping"
        return alive, body
