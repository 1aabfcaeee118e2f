"""Read-your-writes across replicas: after any 2xx from a callback, register, ingest, cancel or
trigger route answered by one replica, ``GET`` of that run on another replica at once (no
polling) shows at least the state that 2xx stood for.

The replicas share PostgreSQL and Redis and a store consumer runs, as deployed. Each story is
played on many fresh runs, so that it cannot pass because the consumer happened to be quick.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from store.consumer import StoreConsumer
from tests.support.gateways import GatewayFactory
from tests.support.runs import wait_url
from tests.support.runtimes import as_agent, json_agent
from tests.support.tenants import Tenant, new_tenant

# Fresh runs each story is played on.
RUNS = 20
# How far along a run is: a read may show a later state than the 2xx said, never an earlier one.
_PROGRESS = {"queued": 0, "running": 1, "waiting": 1, "completed": 2, "failed": 2, "cancelled": 2}

Client = TestClient[web.Request, web.Application]


@dataclass
class Replicas:
    """Two gateway replicas on one PostgreSQL and one Redis, and an organisation calling them:
    the 2xx comes from ``a``, the read goes to ``b``."""

    a: Client
    b: Client
    tenant: Tenant

    async def post(
        self, path: str, *, headers: dict[str, str] | None = None, **body: Any
    ) -> dict[str, Any]:
        """POST ``body`` to replica A with the tenant's key (or ``headers``); its 2xx body."""
        resp = await self.a.post(path, json=body, headers=headers or self.tenant.auth)
        assert 200 <= resp.status < 300, f"{path}: {resp.status} {await resp.text()}"
        answer: dict[str, Any] = await resp.json()
        return answer

    async def read_on_b(self, agent: dict[str, Any], run_id: int) -> dict[str, Any]:
        """The run as ``GET`` on replica B shows it, at once."""
        resp = await self.b.get(
            f"/api/agents/{agent['id']}/runs/{run_id}", headers=self.tenant.auth
        )
        assert resp.status == 200, await resp.text()
        run: dict[str, Any] = await resp.json()
        return run

    async def register(self, agent: dict[str, Any], external_run_id: str) -> int:
        """``registerRun`` on replica A: the run's id."""
        body = await self.post(
            f"/api/agents/{agent['id']}/runs/register", externalRunId=external_run_id
        )
        run_id: int = body["runId"]
        return run_id

    async def report(self, agent: dict[str, Any], run_id: int, **callback: Any) -> None:
        """The run's runtime reports ``callback`` to replica A (answered 202)."""
        await self.post(f"/api/runs/{run_id}/callback", headers=as_agent(agent), **callback)


@pytest.fixture
async def replicas(make_gateway: GatewayFactory, consumer: StoreConsumer) -> Replicas:
    # Twenty trigger-and-waits a minute on one agent: above the default sync limit.
    a = await make_gateway(sync_rate_limit=1000)
    b = await make_gateway(sync_rate_limit=1000)
    return Replicas(a, b, await new_tenant(a))


def shows(run: dict[str, Any], **state: Any) -> dict[str, Any]:
    """The fields of ``run`` that ``state`` names (to compare with ``state``)."""
    return {name: run[name] for name in state}


# A runtime's callbacks, each with the run as a read must show it right after its 202.
STARTED = ({"type": "started"}, {"status": "running"})
PROGRESS = (
    {"type": "output", "output": {"progress": 0.5}},
    {"status": "running", "output_data": {"progress": 0.5}},
)
WAITING = (
    {"type": "waiting", "tokenId": "tok_1", "description": "Approve?", "output": {"draft": 1}},
    {"status": "waiting", "output_data": {"draft": 1}},
)
RESUMED = (
    {"type": "output", "output": {"draft": 2}},
    {"status": "running", "output_data": {"draft": 2}},
)
COMPLETE = (
    {"type": "output", "complete": True, "output": {"pages": 3}, "outputs": 3},
    {"status": "completed", "output_data": {"pages": 3}, "outputs": 3, "error": None},
)
FAIL = (
    {"type": "output", "failed": True, "error": {"message": "the PDF did not render"}},
    {"status": "failed", "output_data": {"progress": 0.5}, "error": "the PDF did not render"},
)


@pytest.mark.parametrize(
    "callbacks",
    [
        pytest.param([STARTED, PROGRESS, COMPLETE], id="started-output-complete"),
        pytest.param([COMPLETE], id="complete-alone"),
        pytest.param([STARTED, PROGRESS, FAIL], id="started-output-fail"),
        pytest.param([STARTED, WAITING, RESUMED, COMPLETE], id="started-waiting-output-complete"),
    ],
)
async def test_each_callback_a_replica_accepted_shows_on_another_at_once(
    replicas: Replicas, callbacks: list[tuple[dict[str, Any], dict[str, Any]]]
) -> None:
    agent = await replicas.tenant.create_agent(output_kind="json")
    for n in range(RUNS):
        run_id = await replicas.register(agent, f"run-{n}")

        for callback, state in callbacks:
            await replicas.report(agent, run_id, **callback)

            run = await replicas.read_on_b(agent, run_id)
            assert shows(run, **state) == state, f"run {n + 1} of {RUNS}, after {callback}"


async def test_the_sdk_sequence_a_replica_accepted_shows_its_end_on_another_at_once(
    replicas: Replicas,
) -> None:
    # The agent SDK's started(), output(), complete() as a runtime author writes them, read
    # only at the end: the end follows earlier events of its run.
    agent = await replicas.tenant.create_agent(output_kind="json")
    for n in range(RUNS):
        run_id = await replicas.register(agent, f"run-{n}")
        for callback, _state in (STARTED, PROGRESS, COMPLETE):
            await replicas.report(agent, run_id, **callback)

        run = await replicas.read_on_b(agent, run_id)
        assert shows(run, **COMPLETE[1]) == COMPLETE[1], f"run {n + 1} of {RUNS}"


async def test_a_run_a_replica_registered_shows_on_another_at_once(replicas: Replicas) -> None:
    agent = await replicas.tenant.create_agent(output_kind="json")
    for n in range(RUNS):
        run_id = await replicas.register(agent, f"run-{n}")

        run = await replicas.read_on_b(agent, run_id)
        assert run["status"] == "running", f"run {n + 1} of {RUNS}"


# Standalone reports, each with the run as a read must show it right after its 202.
INGESTED_RUNNING = ({"status": "running"}, {"status": "running"})
INGESTED_PROGRESS = (
    {"status": "running", "output": {"rows": 10}},
    {"status": "running", "output_data": {"rows": 10}},
)
INGESTED_COMPLETED = (
    {"status": "completed", "output": {"rows": 42}, "outputs": 42},
    {"status": "completed", "output_data": {"rows": 42}, "outputs": 42},
)
INGESTED_FAILED = (
    {"status": "failed", "error": "the source went away"},
    {"status": "failed", "error": "the source went away"},
)


@pytest.mark.parametrize(
    "reports",
    [
        pytest.param([INGESTED_RUNNING, INGESTED_PROGRESS, INGESTED_COMPLETED], id="running-done"),
        pytest.param([INGESTED_COMPLETED], id="completed-alone"),
        pytest.param([INGESTED_RUNNING, INGESTED_FAILED], id="running-failed"),
    ],
)
async def test_each_report_a_replica_ingested_shows_on_another_at_once(
    replicas: Replicas, reports: list[tuple[dict[str, Any], dict[str, Any]]]
) -> None:
    agent = await replicas.tenant.create_agent(output_kind="json", managed_by="standalone")
    for n in range(RUNS):
        for report, state in reports:
            ingested = await replicas.post(
                f"/api/agents/{agent['id']}/runs/ingest", externalRunId=f"exec-{n}", **report
            )

            run = await replicas.read_on_b(agent, ingested["runId"])
            assert shows(run, **state) == state, f"run {n + 1} of {RUNS}, after {report}"


async def fresh(replicas: Replicas, agent: dict[str, Any], n: int) -> int:
    """A run its runtime registered and has not reported on yet."""
    return await replicas.register(agent, f"fresh-{n}")


async def reporting(replicas: Replicas, agent: dict[str, Any], n: int) -> int:
    """A run its runtime registered and reported its start and some output on."""
    run_id = await replicas.register(agent, f"reporting-{n}")
    await replicas.report(agent, run_id, type="started")
    await replicas.report(agent, run_id, type="output", output={"progress": 0.5})
    return run_id


@pytest.mark.parametrize("make_run", [fresh, reporting], ids=["fresh", "reporting"])
async def test_a_run_a_replica_cancelled_shows_cancelled_on_another_at_once(
    replicas: Replicas, make_run: Callable[[Replicas, dict[str, Any], int], Awaitable[int]]
) -> None:
    agent = await replicas.tenant.create_agent(output_kind="json")
    for n in range(RUNS):
        run_id = await make_run(replicas, agent, n)

        cancelled = await replicas.post(f"/api/agents/{agent['id']}/runs/{run_id}/cancel")
        assert cancelled["status"] == "cancelled"

        run = await replicas.read_on_b(agent, run_id)
        assert run["status"] == "cancelled", f"run {n + 1} of {RUNS}"


async def test_a_run_a_replica_triggered_shows_on_another_at_once(
    replicas: Replicas, runtime: TestServer
) -> None:
    # The workflow takes the run and reports nothing: it stays where the gateway put it.
    agent = await json_agent(replicas.tenant, runtime, "accepted?report=0")
    for n in range(RUNS):
        triggered = await replicas.post(f"/api/agents/{agent['id']}/runs/trigger")

        run = await replicas.read_on_b(agent, triggered["runId"])
        assert _PROGRESS[run["status"]] >= _PROGRESS[triggered["status"]], (
            f"run {n + 1} of {RUNS}: {triggered['status']} answered, {run['status']} read"
        )


@pytest.mark.parametrize(
    "webhook",
    [
        # The workflow answers the webhook with its result.
        pytest.param("json", id="answered"),
        # The workflow reports started, output and complete through callbacks (to replica A).
        pytest.param("accepted?report_delay_ms=0", id="reported"),
        # The workflow fails.
        pytest.param("workflow-error", id="failed"),
    ],
)
async def test_a_run_a_replica_waited_for_shows_as_its_200_said_on_another_at_once(
    replicas: Replicas, runtime: TestServer, webhook: str
) -> None:
    agent = await json_agent(replicas.tenant, runtime, webhook)
    for n in range(RUNS):
        waited = await replicas.post(
            wait_url(agent["id"]), input={"result": {"pages": n, "outputs": 2}}, timeoutMs=10000
        )
        assert waited["status"] in {"completed", "failed"}, waited

        run = await replicas.read_on_b(agent, waited["runId"])
        said = {name: waited[name] for name in ("status", "output_data", "outputs", "error")}
        assert shows(run, **said) == said, f"run {n + 1} of {RUNS}"
