"""Redis goes away under load and comes back: no 5xx, no run left without its end, and not an
event held back (Redis is not on the run-event path)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from devkit.embedded import EmbeddedRedis, free_port
from devkit.fakes.n8n import CALLBACKS_SENT
from gateway.ops.dependencies import Dependency, DependencyMonitor
from store.consumer import StoreConsumer
from store.event_buffer import EventBuffer
from tests.support.backends import Backends
from tests.support.consumers import until_drained
from tests.support.dependencies import assert_one_outage_of, probed_through_an_outage
from tests.support.live_gateways import Caller, Live, LiveFactory
from tests.support.prometheus import metric_sum

OUTAGE_S = 2.0


@dataclass(frozen=True)
class Answer:
    """One request of the load, as its caller saw it."""

    at: float
    replica: str
    kind: str
    status: int
    retry_after: str | None
    run_id: int | None


@pytest.fixture
async def consumers(dedicated_redis: EmbeddedRedis, db: asyncpg.Pool) -> AsyncIterator[Consumers]:
    """Store consumers on the dedicated Redis, stopped at the end."""
    started = Consumers(dedicated_redis.url, db)
    yield started
    await started.stop_all()


class Consumers:
    """In-process store consumers that a test starts and stops at chosen moments."""

    def __init__(self, redis_url: str, pool: asyncpg.Pool) -> None:
        self._redis_url = redis_url
        self._pool = pool
        self._running: list[tuple[StoreConsumer, asyncio.Task[None], aioredis.Redis]] = []

    async def start(self, stream: str) -> StoreConsumer:
        """A consumer of ``stream`` (its own Redis client, the session's PostgreSQL)."""
        redis = aioredis.Redis.from_url(self._redis_url, socket_connect_timeout=1)
        worker = StoreConsumer(
            redis,
            self._pool,
            buffer=EventBuffer(redis, stream, 16),
            name=f"outage-{len(self._running)}",
            poll_ms=100,
            lease_s=1.0,
        )
        self._running.append((worker, asyncio.create_task(worker.run()), redis))
        return worker

    async def stop(self, worker: StoreConsumer) -> None:
        """Stop one consumer (it finishes the batch in hand)."""
        for entry in list(self._running):
            if entry[0] is worker:
                worker.stop()
                await asyncio.wait_for(entry[1], 10)
                await entry[2].aclose()
                self._running.remove(entry)

    async def stop_all(self) -> None:
        """Stop every consumer still running."""
        for worker, _task, _redis in list(self._running):
            await self.stop(worker)


async def _drive(
    live: Live,
    replica: str,
    caller: Caller,
    kind: str,
    agent: dict[str, object],
    until: asyncio.Event,
    answers: list[Answer],
) -> None:
    """One kind of request after another until ``until`` is set."""
    loop = asyncio.get_running_loop()
    route = {"trigger": "trigger", "wait": "trigger-and-wait", "download": "trigger-and-download"}
    while not until.is_set():
        async with live.http.post(
            live.url(f"/api/agents/{agent['id']}/runs/{route[kind]}"),
            json={"timeoutMs": 10_000},
            headers=caller.auth,
        ) as resp:
            body = await resp.read()
            run_id = resp.headers.get("X-Run-Id")
            if run_id is None and resp.content_type == "application/json":
                run_id = _run_id(body)
            answers.append(
                Answer(
                    loop.time(),
                    replica,
                    kind,
                    resp.status,
                    resp.headers.get("Retry-After"),
                    int(run_id) if run_id else None,
                )
            )


def _run_id(body: bytes) -> str | None:
    with contextlib.suppress(ValueError):
        value = json.loads(body).get("runId")
        return str(value) if value is not None else None
    return None


async def test_redis_going_away_under_load_loses_nothing(
    dedicated_redis: EmbeddedRedis,
    make_live: LiveFactory,
    consumers: Consumers,
    runtime: TestServer,
    db: asyncpg.Pool,
) -> None:
    """Two replicas under steady load, one failing open and one failing closed when Redis
    cannot decide a rate limit, the consumer stopped; then Redis stops (a clean shutdown) for
    two seconds and starts again on the same data. No answer is a 5xx; the fail-closed replica
    answers 429 with Retry-After only while Redis is away; every run ends, its events recorded
    in PostgreSQL all along (Redis is not on the event path): nothing is buffered."""
    common = {
        "redis_url": dedicated_redis.url,
        "sync_rate_limit": 100_000,
        "trigger_rate_limit": 100_000,
        "wait_recheck_s": 0.5,
    }
    open_replica = await make_live(**common)
    closed_replica = await make_live(rate_limit_fail_open=False, **common)
    stream = open_replica.settings.events_stream
    worker = await consumers.start(stream)
    caller = await open_replica.caller()
    agents = {
        "trigger": await open_replica.agent(
            caller, str(runtime.make_url("/webhook/json")), output_kind="json"
        ),
        "wait": await open_replica.agent(
            caller,
            str(runtime.make_url("/webhook/accepted?report_delay_ms=100")),
            output_kind="json",
        ),
        "download": await open_replica.agent(caller, str(runtime.make_url("/webhook/report.pdf"))),
    }

    loop = asyncio.get_running_loop()
    until = asyncio.Event()
    answers: list[Answer] = []
    drivers = [
        asyncio.create_task(_drive(replica, name, caller, kind, agent, until, answers))
        for replica, name in ((open_replica, "open"), (closed_replica, "closed"))
        for kind, agent in agents.items()
    ]
    await asyncio.sleep(1.0)
    # No consumer: whatever reached the buffer would wait there.
    await consumers.stop(worker)
    await asyncio.sleep(0.5)

    down_at = loop.time()
    dedicated_redis.stop()
    await asyncio.sleep(OUTAGE_S)
    dedicated_redis.start()
    up_at = loop.time()
    await asyncio.sleep(0.3)
    redis = aioredis.Redis.from_url(dedicated_redis.url)
    buffer = EventBuffer(redis, stream, 16)
    await consumers.start(stream)
    await asyncio.sleep(1.5)
    until.set()
    await asyncio.gather(*drivers)

    # No 5xx, from either replica, before, during or after the outage.
    statuses = Counter((a.replica, a.status) for a in answers)
    assert not [a for a in answers if a.status >= 500], statuses
    assert {s for (_r, s) in statuses} <= {200, 202, 429}, statuses
    refused = [a for a in answers if a.status == 429]
    assert all(a.replica == "closed" and a.retry_after == "1" for a in refused)
    # 429s only while Redis was away (give the first requests after it a moment).
    assert all(down_at <= a.at <= up_at + 1.0 for a in refused)
    during = [a for a in answers if down_at <= a.at <= up_at]
    assert [a for a in during if a.replica == "open" and a.status < 300], "no work was done"

    # Every run ended (the callbacks' and the webhooks' ends alike), and nothing is left over.
    run_ids = sorted({a.run_id for a in answers if a.run_id is not None and a.status < 300})
    deadline = loop.time() + 30
    while True:
        unfinished = await db.fetchval(
            "SELECT count(*) FROM runs WHERE id = ANY($1) AND status NOT IN "
            "('completed', 'failed', 'cancelled')",
            run_ids,
        )
        if not unfinished or loop.time() > deadline:
            break
        await asyncio.sleep(0.2)
    assert unfinished == 0
    failed = await db.fetch(
        "SELECT id, error FROM runs WHERE id = ANY($1) AND status <> 'completed'", run_ids
    )
    assert failed == [], failed
    await until_drained(buffer)
    await redis.aclose()
    callbacks = Counter(c["status"] for c in runtime.app[CALLBACKS_SENT])
    assert set(callbacks) == {202}, callbacks

    metrics = "".join(
        [
            await (await open_replica.http.get(r.url("/metrics"))).text()
            for r in (open_replica, closed_replica)
        ]
    )
    via_database = metric_sum(metrics, "agent_gateway_run_events_published_total", via="database")
    via_buffer = metric_sum(metrics, "agent_gateway_run_events_published_total", via="buffer")
    assert via_buffer == 0
    print(  # docs/reliability.md quotes these figures
        f"\nredis outage {up_at - down_at:.1f} s: {len(answers)} requests "
        f"({len(during)} during it), statuses {dict(sorted(statuses.items()))}; "
        f"{len(run_ids)} runs all completed; {int(via_database)} events recorded in PostgreSQL, "
        f"{int(via_buffer)} buffered"
    )


async def test_a_download_whose_caller_hangs_up_at_the_last_byte_still_completes(
    make_live: LiveFactory, runtime: TestServer
) -> None:
    """Regression: the run's completion was recorded after the last byte went out, in the
    request's own task. A caller that closes its connection as soon as the body is whole
    (curl does) cancelled that task, and the run stayed running until the reaper failed it.
    Without Redis the record is slower (straight to PostgreSQL), which made it lose the race
    every time."""
    live = await make_live(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    caller = await live.caller()
    agent = await live.agent(caller, str(runtime.make_url("/webhook/report.pdf")))
    run_ids = []
    for _ in range(5):
        async with live.http.post(
            live.url(f"/api/agents/{agent['id']}/runs/trigger-and-download"),
            headers=caller.auth,
        ) as resp:
            assert resp.status == 200
            await resp.read()
            run_ids.append(resp.headers["X-Run-Id"])
        # live.http closes each connection as soon as the response is whole.
    for run_id in run_ids:
        run = await live.terminal_run(caller, agent["id"], run_id, timeout=5)
        assert run["status"] == "completed"


async def test_the_dependency_monitor_says_once_that_redis_left_and_once_that_it_is_back(
    dedicated_redis: EmbeddedRedis, backends: Backends
) -> None:
    """The monitor pings on a client of its own; Redis stopped is an outage from the next
    probe, and back from the first probe after it restarts."""
    monitor = DependencyMonitor(backends.database_url, dedicated_redis.url)
    try:
        seen = await probed_through_an_outage(monitor, dedicated_redis.stop, dedicated_redis.start)
    finally:
        await monitor.close()

    assert_one_outage_of(seen, Dependency.REDIS)
