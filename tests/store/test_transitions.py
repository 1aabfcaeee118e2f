"""Run transitions in PostgreSQL: the order a run's events are recorded in is the order its row
took them, a run that ended never changes, and a buffered event never undoes a newer one."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
from typing import Any

import asyncpg

from store.enums import EventType, RunStatus
from store.migrate import migrate_url
from store.models import Agent
from store.pool import create_pool
from store.run_events import RunEvent
from store.transitions import (
    LeaseLost,
    Outcome,
    apply_buffered,
    new_lease_token,
    record_events,
)
from tests.support.backends import Backends
from tests.support.databases import scratch_database
from tests.support.store_runs import new_run, new_runs, store_agent

STREAM = "test:transitions"


async def row(db: asyncpg.Pool, run_id: int) -> asyncpg.Record:
    found = await db.fetchrow(
        "SELECT status, output_data, outputs, error, waiting_for FROM runs WHERE id = $1", run_id
    )
    assert found is not None
    return found


async def test_outputs_then_a_bare_complete_end_with_the_last_output(
    db: asyncpg.Pool, agent: Agent
) -> None:
    """The agent SDK's ``output()`` twice then ``complete()`` without an output."""
    run_id = await new_run(db, agent)
    for event in (
        RunEvent(run_id, EventType.STARTED),
        RunEvent(run_id, EventType.OUTPUT, output_data={"v": 1}),
        RunEvent(run_id, EventType.OUTPUT, output_data={"v": 2}, outputs=2),
        RunEvent(run_id, EventType.COMPLETED),
    ):
        [transition] = await record_events(db, [event])
        assert transition.outcome is Outcome.APPLIED

    ended = await row(db, run_id)
    assert (ended["status"], ended["output_data"], ended["outputs"]) == ("completed", {"v": 2}, 2)


async def test_events_of_one_run_in_one_call_are_applied_in_the_order_given(
    db: asyncpg.Pool, agent: Agent
) -> None:
    run_id = await new_run(db, agent)
    events = [RunEvent(run_id, EventType.OUTPUT, output_data={"v": v}) for v in range(5)]
    events.append(RunEvent(run_id, EventType.COMPLETED, outputs=5))
    events.append(RunEvent(run_id, EventType.OUTPUT, output_data={"v": "late"}))

    transitions = await record_events(db, events)

    assert [t.outcome for t in transitions] == [Outcome.APPLIED] * 6 + [Outcome.ENDED]
    ended = await row(db, run_id)
    assert (ended["status"], ended["output_data"], ended["outputs"]) == ("completed", {"v": 4}, 5)
    ended_run = transitions[5].ended_run
    assert ended_run is not None
    assert ended_run.output_data == {"v": 4}


async def test_a_run_that_ended_refuses_every_later_event_and_keeps_its_row(
    db: asyncpg.Pool, agent: Agent
) -> None:
    run_id = await new_run(db, agent)
    await record_events(db, [RunEvent(run_id, EventType.FAILED, error="boom")])
    before = await row(db, run_id)

    late = [
        RunEvent(run_id, kind, output_data={"late": True})
        for kind in (EventType.OUTPUT, EventType.WAITING, EventType.COMPLETED)
    ] + [RunEvent(run_id, EventType.STARTED), RunEvent(run_id, EventType.CANCELLED)]
    transitions = await record_events(db, late)

    assert {t.outcome for t in transitions} == {Outcome.ENDED}
    assert await row(db, run_id) == before


async def test_started_twice_changes_nothing_and_is_not_an_end(
    db: asyncpg.Pool, agent: Agent
) -> None:
    run_id = await new_run(db, agent)
    first, second = await record_events(
        db, [RunEvent(run_id, EventType.STARTED), RunEvent(run_id, EventType.STARTED)]
    )
    assert (first.outcome, second.outcome) == (Outcome.APPLIED, Outcome.UNCHANGED)
    [missing] = await record_events(db, [RunEvent(10**12, EventType.COMPLETED)])
    assert missing.outcome is Outcome.MISSING


async def test_waiting_records_what_the_run_waits_for_and_an_output_resumes_it(
    db: asyncpg.Pool, agent: Agent
) -> None:
    run_id = await new_run(db, agent)
    wait_for = {"tokenId": "t-1", "description": "approval"}
    await record_events(db, [RunEvent(run_id, EventType.WAITING, waiting_for=wait_for)])
    waiting = await row(db, run_id)
    assert (waiting["status"], waiting["waiting_for"]) == ("waiting", wait_for)

    await record_events(db, [RunEvent(run_id, EventType.OUTPUT, output_data={"approved": True})])
    resumed = await row(db, run_id)
    assert (resumed["status"], resumed["waiting_for"]) == ("running", None)


async def test_replicas_recording_the_same_runs_at_once_never_deadlock(
    db: asyncpg.Pool, agent: Agent
) -> None:
    """Two replicas' group commits name the same runs in opposite orders."""
    run_ids = [await new_run(db, agent) for _ in range(40)]

    async def replica(order: list[int], tag: str) -> None:
        for _ in range(10):
            events = [RunEvent(r, EventType.OUTPUT, output_data={"by": tag}) for r in order]
            await record_events(db, events)

    shuffled = run_ids[:]
    random.Random(7).shuffle(shuffled)
    await asyncio.wait_for(
        asyncio.gather(replica(run_ids, "a"), replica(shuffled[::-1], "b")), timeout=30
    )
    outputs = await db.fetch("SELECT output_data FROM runs WHERE id = ANY($1)", run_ids)
    assert {tuple(r["output_data"].items()) for r in outputs} <= {(("by", "a"),), (("by", "b"),)}


async def test_a_buffered_output_older_than_the_row_is_refused_but_an_end_never_is(
    db: asyncpg.Pool, agent: Agent
) -> None:
    """Held while PostgreSQL was away on one replica, applied after newer events went straight
    to PostgreSQL from another."""
    run_id = await new_run(db, agent)
    then = dt.datetime.now(dt.UTC)
    old_output = RunEvent(run_id, EventType.OUTPUT, at=then, output_data={"v": "old"})
    old_end = RunEvent(run_id, EventType.COMPLETED, at=then + dt.timedelta(milliseconds=1))
    newer = RunEvent(
        run_id, EventType.OUTPUT, at=then + dt.timedelta(seconds=1), output_data={"v": "new"}
    )
    await record_events(db, [newer])

    token = await new_lease_token(db, STREAM, 0)
    async with db.acquire() as conn:
        stale, ended = await apply_buffered(
            conn, [old_output, old_end], stream=STREAM, tokens={0: token}
        )
        [again] = await apply_buffered(conn, [old_end], stream=STREAM, tokens={0: token})

    assert (stale.outcome, ended.outcome, again.outcome) == (
        Outcome.STALE,
        Outcome.APPLIED,
        Outcome.DUPLICATE,
    )
    ended_row = await row(db, run_id)
    assert (ended_row["status"], ended_row["output_data"]) == ("completed", {"v": "new"})


async def test_a_consumer_whose_lease_was_taken_over_applies_nothing(
    db: asyncpg.Pool, agent: Agent
) -> None:
    run_id = await new_run(db, agent)
    paused = await new_lease_token(db, STREAM, 3)
    successor = await new_lease_token(db, STREAM, 3)
    assert successor > paused

    async with db.acquire() as conn:
        try:
            await apply_buffered(
                conn,
                [RunEvent(run_id, EventType.COMPLETED)],
                stream=STREAM,
                tokens={3: paused},
            )
        except LeaseLost:
            pass
        else:
            raise AssertionError("a superseded lease applied a batch")
        assert (await row(db, run_id))["status"] == "queued"
        [applied] = await apply_buffered(
            conn,
            [RunEvent(run_id, EventType.COMPLETED)],
            stream=STREAM,
            tokens={3: successor},
        )
    assert applied.outcome is Outcome.APPLIED


async def test_a_backlog_applied_after_most_runs_ended_reads_its_runs_by_id_not_the_table(
    db: asyncpg.Pool, agent: Agent
) -> None:
    """The moment a buffered backlog is applied (PostgreSQL is back after an outage) is the
    moment the table's statistics are most likely stale: they were taken while almost every run
    had ended, and a burst of new runs came since. Planned from those statistics alone, the
    statement that applies the backlog read the whole runs table once per event (a nested loop
    over a sequential scan: 400 events over 40,000 runs took 4.5 s). It names its runs by id, so
    each is read through the primary key whatever the statistics say."""
    await new_runs(db, agent, 3000, status=RunStatus.COMPLETED)
    await db.execute("ANALYZE runs")
    backlog = (await new_runs(db, agent, 3000))[:400]
    token = await new_lease_token(db, STREAM, 5)
    started = [RunEvent(run_id, EventType.STARTED) for run_id in backlog]

    async with db.acquire() as conn, conn.transaction():
        applied = await apply_buffered(conn, started, stream=STREAM, tokens={5: token})
        # This transaction's own reads of the table so far.
        scans = await conn.fetchrow(
            "SELECT seq_scan, seq_tup_read FROM pg_stat_xact_user_tables WHERE relname = 'runs'"
        )

    assert {t.outcome for t in applied} == {Outcome.APPLIED}
    assert scans is not None
    assert (scans["seq_scan"], scans["seq_tup_read"]) == (0, 0)


async def test_a_large_backlog_is_never_joined_to_its_runs_by_a_nested_loop(
    backends: Backends,
) -> None:
    """A consumer's connection plans the statement that applies a batch once for every batch
    after its first five (PostgreSQL's generic plan), taking each batch for 10 events whatever
    its size. With statistics that say the runs have ended, that plan joined a batch's runs to
    its events by a nested loop, one pass over the events per run (500 events: 93 ms against
    12 ms). The plans PostgreSQL used are read back as they ran (auto_explain, sent to this
    session), in a database of the test's own: the statistics are those of its runs alone."""
    plans: list[dict[str, Any]] = []

    def keep_plan(_conn: object, message: asyncpg.PostgresLogMessage) -> None:
        if message.message.startswith("duration:"):
            plans.append(json.loads(message.message.split("plan:", 1)[1]))

    async with scratch_database(backends.database_url) as url:
        await migrate_url(url)
        db = await create_pool(url, min_size=1, max_size=4)
        try:
            agent = await store_agent(db)
            await new_runs(db, agent, 5000, status=RunStatus.COMPLETED)
            await db.execute("ANALYZE runs")
            backlog = (await new_runs(db, agent, 5000))[:3000]
            token = await new_lease_token(db, STREAM, 6)
            async with db.acquire() as conn:
                for setting in (
                    "LOAD 'auto_explain'",
                    "SET auto_explain.log_min_duration = 0",
                    "SET auto_explain.log_level = notice",
                    "SET auto_explain.log_format = json",
                    # What five batches on one connection lead to.
                    "SET plan_cache_mode = force_generic_plan",
                ):
                    await conn.execute(setting)
                conn.add_log_listener(keep_plan)
                try:
                    applied = await apply_buffered(
                        conn,
                        [RunEvent(run_id, EventType.STARTED) for run_id in backlog],
                        stream=STREAM,
                        tokens={6: token},
                    )
                finally:
                    conn.remove_log_listener(keep_plan)
        finally:
            await db.close()

    assert {t.outcome for t in applied} == {Outcome.APPLIED}
    # One statement per 500 events.
    updates = [p for p in plans if p["Query Text"].lstrip().startswith("UPDATE runs AS r")]
    assert len(updates) == 6
    assert all("Nested Loop" not in _node_types(update["Plan"]) for update in updates)


def _node_types(node: dict[str, Any]) -> set[str]:
    """Every node type of an EXPLAIN (FORMAT JSON) plan tree."""
    found = {str(node["Node Type"])}
    for child in node.get("Plans", []):
        found |= _node_types(child)
    return found
