"""Flow 7: a rolling restart of both ``serve`` replicas, then both consumers, as the kubelet
replaces pods (preStop, SIGTERM, the grace period), while callers keep calling through the
load balancer. No caller notices, and every run they started ends."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.support.deployed import configmap
from tests.support.deployed_runs import TERMINAL, get_run
from tests.support.deployed_tree import Org, Tree

WAIT_CALLERS = 3
TRIGGER_CALLERS = 1
AGENTS_PER_CALLER = 40
PAUSE_S = 0.2


@dataclass
class Seen:
    """What the callers saw, and during which restart step each call began."""

    step: str = "before"
    answers: Counter[tuple[str, int]] = field(default_factory=Counter)
    steps: Counter[str] = field(default_factory=Counter)
    runs: list[tuple[int, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ran_out: int = 0


async def caller(
    http: aiohttp.ClientSession,
    tree: Tree,
    org: Org,
    route: str,
    agents: list[dict[str, Any]],
    uses: int,
    seen: Seen,
    stop: asyncio.Event,
) -> None:
    """Call ``route`` on each agent ``uses`` times (never over its rate limit), until stopped."""
    for agent in agents:
        for _ in range(uses):
            if stop.is_set():
                return
            seen.steps[seen.step] += 1
            try:
                async with http.post(
                    f"{tree.front}/api/agents/{agent['id']}/runs/{route}",
                    headers=org.auth,
                    json={"input": {"result": {"ok": True}}},
                ) as resp:
                    text = await resp.text()
                    seen.answers[(route, resp.status)] += 1
                    if resp.status in (200, 202):
                        seen.runs.append((agent["id"], int(json.loads(text)["runId"])))
                    else:
                        seen.errors.append(f"{route} {resp.status}: {text[:300]}")
            except aiohttp.ClientError as exc:
                seen.errors.append(f"{route}: {exc!r}")
            await asyncio.sleep(PAUSE_S)
    seen.ran_out += 1


async def test_a_rolling_restart_of_replicas_and_consumers_fails_no_caller(
    tree: Tree, org: Org, http: aiohttp.ClientSession
) -> None:
    kit = configmap()
    # Each agent is used at most its bucket's size: the per-agent limits are not the subject.
    wait_uses = int(kit.get("SYNC_RATE_LIMIT", "5"))
    trigger_uses = int(kit.get("TRIGGER_RATE_LIMIT", "60"))
    # A short delay keeps calls in flight when a replica is told to stop.
    waiters = [
        [await org.agent("json?delay_ms=200") for _ in range(AGENTS_PER_CALLER)]
        for _ in range(WAIT_CALLERS)
    ]
    triggered = [
        [await org.agent("json?delay_ms=200") for _ in range(4)] for _ in range(TRIGGER_CALLERS)
    ]
    seen, stop = Seen(), asyncio.Event()
    exits: dict[str, int] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as callers:
        load = asyncio.gather(
            *(
                caller(callers, tree, org, "trigger-and-wait", agents, wait_uses, seen, stop)
                for agents in waiters
            ),
            *(
                caller(callers, tree, org, "trigger", agents, trigger_uses, seen, stop)
                for agents in triggered
            ),
        )
        try:
            await asyncio.sleep(1)
            for i in range(len(tree.serve_names)):
                seen.step = f"serve-{i}"
                exits[seen.step] = await asyncio.to_thread(tree.replace_serve, i)
                await asyncio.sleep(1)
            for i in range(len(tree.consumer_names)):
                seen.step = f"consume-{i}"
                exits[seen.step] = await asyncio.to_thread(tree.replace_consumer, i)
                await asyncio.sleep(1)
            seen.step = "after"
        finally:
            stop.set()
            await load

    print(f"\nrolling restart: {dict(seen.answers)}; calls begun per step {dict(seen.steps)}")
    # The load covered every step (the harness's own check: callers did not run out early).
    assert all(seen.steps[step] > 0 for step in exits), dict(seen.steps)
    # Each pod drained and exited by itself within its grace period (no SIGKILL).
    assert exits == dict.fromkeys(exits, 0)
    # No caller noticed: trigger-and-wait answered 200, trigger 202, nothing else.
    assert seen.errors == []
    assert set(seen.answers) <= {("trigger-and-wait", 200), ("trigger", 202)}

    # Every run a caller was given ends (bounded: about a minute of polling in all).
    unfinished: dict[int, str] = {}
    pending = list(seen.runs)
    for _ in range(60):
        if not pending:
            break
        await asyncio.sleep(1)
        runs = [await get_run(http, tree.front, org.auth, a, r) for a, r in pending]
        unfinished = {run["runId"]: run["status"] for run in runs if run["status"] not in TERMINAL}
        failed = [run for run in runs if run["status"] in TERMINAL - {"completed"}]
        assert failed == [], failed
        pending = [(a, r) for a, r in pending if r in unfinished]
    assert unfinished == {}, f"{len(unfinished)} runs never ended: {unfinished}"
