"""Runs created together share one statement: a burst of trigger calls each gets its own row,
and one bad row in a batch fails only its own caller."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import asyncpg
import pytest

from store import agents, runs
from store.enums import RunStatus, TriggerKind
from store.models import Agent, Run


def new_run(agent: Agent, n: int, **fields: object) -> runs.NewRun:
    values: dict[str, object] = {
        "agent": agent,
        "input_data": {"n": n, "text": f"caller {n}"},
        "created_by": None,
        "deadline": dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
        "trigger_kind": TriggerKind.WAIT,
        "started": n % 2 == 0,
        "trace_parent": f"00-{n:032x}-{n:016x}-01",
        **fields,
    }
    return runs.NewRun(**values)  # type: ignore[arg-type]


async def test_a_burst_of_inserts_gives_every_caller_its_own_row(
    db: asyncpg.Pool, agent: Agent
) -> None:
    inserts = runs.RunInserts(db)
    other = await agents.create_agent(
        db,
        agent.org_id,
        b"salt-2",
        uuid.uuid4().bytes,
        {"name": "b", "runtime": {"kind": "n8n", "webhook_url": "http://127.0.0.1:9/"}},
    )
    wanted = [new_run(agent if n % 3 else other, n) for n in range(300)]

    created = await asyncio.gather(*(inserts.insert(new) for new in wanted))

    assert len({run.id for run in created}) == 300
    for new, run in zip(wanted, created, strict=True):
        assert (run.agent_id, run.org_id, run.input) == (
            new.agent.id,
            new.agent.org_id,
            new.input_data,
        )
        assert run.status == (RunStatus.RUNNING if new.started else RunStatus.QUEUED)
        assert (run.started_at is not None) == new.started
        assert run.trace_parent == new.trace_parent
        # What the caller was handed is what the table holds.
        stored = await runs.get_run(db, run.id)
        assert stored == run
    count = await db.fetchval(
        "SELECT count(*) FROM runs WHERE agent_id = ANY($1::bigint[])", [agent.id, other.id]
    )
    assert count == 300


async def test_a_row_postgresql_refuses_fails_its_own_caller_only(
    db: asyncpg.Pool, agent: Agent
) -> None:
    inserts = runs.RunInserts(db)
    # jsonb cannot hold a NUL character: the batch's statement is refused as a whole.
    bad = new_run(agent, 7, input_data={"text": "nul \u0000 here"})
    wanted = (
        [new_run(agent, n) for n in range(5)] + [bad] + [new_run(agent, n) for n in range(8, 12)]
    )

    outcomes = await asyncio.gather(
        *(inserts.insert(new) for new in wanted), return_exceptions=True
    )

    assert isinstance(outcomes[5], asyncpg.PostgresError)
    good = [o for i, o in enumerate(outcomes) if i != 5]
    assert all(isinstance(o, Run) for o in good)
    assert [o.input for o in good] == [n.input_data for i, n in enumerate(wanted) if i != 5]  # type: ignore[union-attr]
    count = await db.fetchval("SELECT count(*) FROM runs WHERE agent_id = $1", agent.id)
    assert count == 9


@pytest.mark.parametrize("size", [1, 2])
async def test_one_or_two_inserts_at_once_get_their_rows(
    db: asyncpg.Pool, agent: Agent, size: int
) -> None:
    inserts = runs.RunInserts(db)

    created = await asyncio.gather(*(inserts.insert(new_run(agent, n)) for n in range(size)))

    assert [run.input["n"] for run in created] == list(range(size))
