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
from typing import Any

import asyncpg
import structlog
from prometheus_client import Gauge
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from gateway.ops.dependencies import DependencyMonitor
from gateway.ops.metrics import PoolCollector, dependency_gauge, new_registry
from gateway.settings import Settings
from store.consumer import StoreConsumer
from store.redis_client import RedisClient
from store.retention import RETENTION_KINDS

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
            "Buffered run events handled by this consumer: applied (the run changed), duplicate "
            "(applied before), refused (the run had ended, or its row was newer), poison "
            "(undecodable)",
            labels=["outcome"],
        )
        for outcome, value in (
            ("applied", stats.applied),
            ("duplicate", stats.duplicates),
            ("refused", stats.refused),
            ("poison", stats.poison),
        ):
            events.add_metric([outcome], value)
        yield events
        yield CounterMetricFamily(
            "agent_gateway_store_runs_reaped",
            "Runs failed by the reaper because their deadline passed",
            value=stats.reaped,
        )
        deleted = CounterMetricFamily(
            "agent_gateway_store_retention_deleted",
            "Rows deleted by retention, by kind (docs/operations.md, Retention)",
            labels=["kind"],
        )
        for kind in RETENTION_KINDS:
            deleted.add_metric([kind], stats.expired.get(kind, 0))
        yield deleted
        yield CounterMetricFamily(
            "agent_gateway_store_partition_leases_lost",
            "Batches not applied because the partition's lease had passed to another consumer",
            value=stats.leases_lost,
        )


class ConsumerMonitor:
    """Metrics and liveness of one store consumer process."""

    def __init__(
        self,
        consumer: StoreConsumer,
        redis: RedisClient,
        pool: asyncpg.Pool,
        settings: Settings,
    ) -> None:
        self.consumer = consumer
        self._redis = redis
        self.registry = new_registry()
        self.registry.register(_StatsCollector(consumer))
        self.registry.register(PoolCollector("agent_gateway_store", lambda: pool))
        self.buffered = Gauge(
            "agent_gateway_store_buffered_events",
            "Run events in the Redis buffer (held while PostgreSQL was away), all partitions",
            registry=self.registry,
        )
        self.partitions_held = Gauge(
            "agent_gateway_store_partitions_held",
            "Partitions of the event buffer this consumer holds a lease on",
            registry=self.registry,
        )
        self.partitions_held.set_function(lambda: len(consumer.leases.held))
        self.loop_age = Gauge(
            "agent_gateway_store_loop_age_seconds",
            f"Seconds since the consume loop last turned (/healthz fails past {STUCK_AFTER_S:g})",
            registry=self.registry,
        )
        self.loop_age.set_function(lambda: time.monotonic() - consumer.heartbeat)
        self.oldest_age = Gauge(
            "agent_gateway_store_oldest_event_age_seconds",
            "Age of the oldest event in the buffer (0 when it is empty)",
            registry=self.registry,
        )
        dependency_up = dependency_gauge(self.registry)
        # Probed at each scrape: the consumer waits outages out, this says it is waiting. On a
        # connection of the monitor's own: the consumer's pool is busiest (applying a backlog)
        # right after an outage.
        self.dependencies = DependencyMonitor(
            settings.database_url,
            settings.redis_url,
            redis_cluster=settings.redis_cluster,
            on_probe=lambda dependency, up: dependency_up.labels(dependency.value).set(up),
        )

    async def refresh(self) -> None:
        """Probe PostgreSQL and Redis; read the buffer's backlog (NaN when Redis cannot say)."""
        await self.dependencies.probe()
        try:
            async with asyncio.timeout(_LAG_PROBE_TIMEOUT_S):
                buffered, age = await self._backlog()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("consumer_backlog_unavailable", error=str(exc))
            buffered = age = math.nan
        self.buffered.set(buffered)
        self.oldest_age.set(age)

    async def _backlog(self) -> tuple[float, float]:
        buffer = self.consumer.buffer
        lengths = await buffer.lengths()
        oldest_ms: list[int] = []
        for partition, length in enumerate(lengths):
            if length:
                first: Any = await self._redis.xrange(buffer.stream_key(partition), count=1)
                if first:
                    entry_id = first[0][0]
                    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    oldest_ms.append(int(text.split("-")[0]))
        age = max(0.0, time.time() - min(oldest_ms) / 1000) if oldest_ms else 0.0
        return float(sum(lengths)), age

    async def close(self) -> None:
        """Close the dependency probe's connection."""
        await self.dependencies.close()

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
