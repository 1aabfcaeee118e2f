"""Runs: inserting them (triggered, registered, ingested), reading them, idempotency keys."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from store import jsonb
from store.enums import RunStatus
from store.group_commit import GroupCommit
from store.models import Agent, Run
from store.pool import Executor

RUN_COLUMNS = ", ".join(column.name for column in dataclasses.fields(Run))
# The same, named through the alias ``r`` (a statement whose other relations share names).
QUALIFIED_RUN_COLUMNS = ", ".join(f"r.{column.name}" for column in dataclasses.fields(Run))


def run_from_row(row: asyncpg.Record) -> Run:
    """A :class:`Run` from a row of :data:`RUN_COLUMNS`."""
    values = dict(row)
    values["status"] = RunStatus(values["status"])
    return Run(**values)


async def insert_run(
    db: Executor,
    *,
    agent: Agent,
    input_data: dict[str, Any],
    created_by: uuid.UUID | None,
    deadline: dt.datetime,
    trigger_kind: str,
    started: bool = False,
    trace_parent: str | None = None,
) -> Run:
    """Create a run row in ``queued``, or already ``running`` (started now) when ``started``:
    a run the gateway invokes at once needs no separate started event. ``trace_parent`` is the
    W3C trace context it starts in, when tracing is on."""
    row = await db.fetchrow(
        f"""INSERT INTO runs (agent_id, org_id, input, created_by, deadline, trigger_kind,
                              status, started_at, trace_parent)
            VALUES ($1, $2, $3, $4, $5, $6,
                    CASE WHEN $7::boolean THEN 'running' ELSE 'queued' END,
                    CASE WHEN $7::boolean THEN now() END, $8)
            RETURNING {RUN_COLUMNS}""",
        agent.id,
        agent.org_id,
        input_data,
        created_by,
        deadline,
        trigger_kind,
        started,
        trace_parent,
    )
    assert row is not None
    return run_from_row(row)


@dataclasses.dataclass(frozen=True, slots=True)
class NewRun:
    """The arguments of :func:`insert_run`, as one item of a batch (:class:`RunInserts`)."""

    agent: Agent
    input_data: dict[str, Any]
    created_by: uuid.UUID | None
    deadline: dt.datetime
    trigger_kind: str
    started: bool = False
    trace_parent: str | None = None


# One row per item of a batch, from one array per column. The ids are drawn first, beside each
# item's place in the batch (``ord``), so that the rows come back in the batch's order whatever
# order RETURNING lists them in.
_INSERT_BATCH = f"""
WITH batch AS MATERIALIZED (
  SELECT nextval(pg_get_serial_sequence('runs', 'id')) AS id, u.*
  FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::uuid[], $5::timestamptz[], $6::text[],
              $7::boolean[], $8::text[])
       WITH ORDINALITY AS u(agent_id, org_id, input, created_by, deadline, trigger_kind,
                            started, trace_parent, ord)),
inserted AS (
  INSERT INTO runs (id, agent_id, org_id, input, created_by, deadline, trigger_kind, status,
                    started_at, trace_parent)
  OVERRIDING SYSTEM VALUE
  SELECT id, agent_id, org_id, input::jsonb, created_by, deadline, trigger_kind,
         CASE WHEN started THEN 'running' ELSE 'queued' END,
         CASE WHEN started THEN now() END, trace_parent
  FROM batch ORDER BY ord
  RETURNING {RUN_COLUMNS})
SELECT inserted.* FROM inserted JOIN batch ON batch.id = inserted.id ORDER BY batch.ord"""


class RunInserts:
    """Runs created at about the same moment, inserted in one statement.

    The inserts many requests ask for together go out as one statement
    (:class:`store.group_commit.GroupCommit`): a burst of trigger calls costs PostgreSQL and
    the pool one statement and one connection per batch, not one per call, and no call waits
    in the pool's queue behind thousands of others (where its acquire timeout would turn a
    busy moment into a 503). A batch the statement refuses (an agent deleted meanwhile, an
    input PostgreSQL cannot hold) is inserted again one row at a time, so that each caller gets
    its own row or its own error.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._commits: GroupCommit[NewRun, Run | Exception] = GroupCommit(self._write)

    async def insert(self, new: NewRun) -> Run:
        """Insert ``new`` with whatever else is submitted meanwhile; its row."""
        result = await self._commits.submit(new)
        if isinstance(result, Exception):
            raise result
        return result

    async def _write(self, batch: Sequence[NewRun]) -> list[Run | Exception]:
        if len(batch) == 1:
            return [await _insert_alone(self._pool, batch[0])]
        try:
            rows = await self._pool.fetch(_INSERT_BATCH, *_columns(batch))
        except asyncpg.PostgresError:
            return [await _insert_alone(self._pool, new) for new in batch]
        return [run_from_row(row) for row in rows]


def _columns(batch: Sequence[NewRun]) -> list[list[Any]]:
    return [
        [new.agent.id for new in batch],
        [new.agent.org_id for new in batch],
        [jsonb.dumps(new.input_data) for new in batch],
        [new.created_by for new in batch],
        [new.deadline for new in batch],
        [new.trigger_kind for new in batch],
        [new.started for new in batch],
        [new.trace_parent for new in batch],
    ]


async def _insert_alone(pool: asyncpg.Pool, new: NewRun) -> Run | Exception:
    """One item of a batch on its own; a refusal is that item's caller's to raise."""
    try:
        return await insert_run(
            pool,
            agent=new.agent,
            input_data=new.input_data,
            created_by=new.created_by,
            deadline=new.deadline,
            trigger_kind=new.trigger_kind,
            started=new.started,
            trace_parent=new.trace_parent,
        )
    except asyncpg.PostgresError as exc:
        return exc


async def get_run_of_agent(db: Executor, agent_id: int, run_id: int) -> Run | None:
    """The run with ``run_id`` when it is a run of ``agent_id``."""
    row = await db.fetchrow(
        f"SELECT {RUN_COLUMNS} FROM runs WHERE id = $1 AND agent_id = $2", run_id, agent_id
    )
    return None if row is None else run_from_row(row)


async def get_run(db: Executor, run_id: int) -> Run | None:
    """The run with ``run_id``, whoever owns it."""
    row = await db.fetchrow(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = $1", run_id)
    return None if row is None else run_from_row(row)


async def current(db: Executor, run: Run) -> Run:
    """``run`` as its row reads now (``run`` itself should the row be gone)."""
    return await get_run(db, run.id) or run


async def extend_deadline(db: Executor, run_id: int, *, lease_s: float) -> float | None:
    """Move an in-flight run's deadline to at least ``lease_s`` seconds from now (never
    earlier); return the seconds left to it, by the database's clock, or ``None`` when the run
    is no longer in flight.

    What keeps a run that outlives its deadline on purpose (a download still streaming) from
    the reaper: the replica doing the work renews it, and a replica that dies stops renewing.
    """
    left = await db.fetchval(
        """UPDATE runs SET deadline = GREATEST(deadline, now() + make_interval(secs => $2))
           WHERE id = $1 AND status IN ('queued', 'running', 'waiting')
           RETURNING EXTRACT(EPOCH FROM deadline - now())::float8""",
        run_id,
        lease_s,
    )
    return None if left is None else float(left)


async def ended_runs(db: Executor, run_ids: list[int]) -> list[Run]:
    """Those of ``run_ids`` that have ended (or no longer exist: then they are absent), in one
    statement whatever their number."""
    rows = await db.fetch(
        f"""SELECT {RUN_COLUMNS} FROM runs
            WHERE id = ANY($1::bigint[]) AND status IN ('completed', 'failed', 'cancelled')""",
        run_ids,
    )
    return [run_from_row(row) for row in rows]


async def claim_idempotency_key(
    db: Executor, *, agent_id: int, key: str, request_hash: bytes, run_id: int
) -> bool:
    """Bind ``key`` to ``run_id`` unless a binding younger than 24 h exists.

    Run in the transaction that created the run: when this returns ``False`` the caller rolls
    back, and the run of the existing binding is the answer.
    """
    bound = await db.fetchval(
        """INSERT INTO idempotency_keys (agent_id, key, request_hash, run_id)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (agent_id, key) DO UPDATE
               SET request_hash = EXCLUDED.request_hash, run_id = EXCLUDED.run_id,
                   created_at = now()
               WHERE idempotency_keys.created_at < now() - interval '24 hours'
           RETURNING run_id""",
        agent_id,
        key,
        request_hash,
        run_id,
    )
    return bool(bound == run_id)


async def find_idempotent_run(db: Executor, *, agent_id: int, key: str) -> tuple[int, bytes] | None:
    """The run bound to ``key`` in the last 24 h and the hash of its request, if any."""
    row = await db.fetchrow(
        """SELECT run_id, request_hash FROM idempotency_keys
           WHERE agent_id = $1 AND key = $2 AND created_at >= now() - interval '24 hours'""",
        agent_id,
        key,
    )
    return None if row is None else (row["run_id"], bytes(row["request_hash"]))


async def register_external_run(
    db: Executor,
    *,
    agent: Agent,
    external_run_id: str,
    status: str,
    deadline: dt.datetime,
    trigger_kind: str,
) -> tuple[Run, bool]:
    """The agent's run for ``external_run_id``, created in ``status`` if it does not exist yet;
    with whether this call created it."""
    row = await db.fetchrow(
        f"""INSERT INTO runs (agent_id, org_id, status, started_at, deadline, trigger_kind,
                              external_run_id)
            VALUES ($1, $2, $3::text,
                    CASE WHEN $3::text = 'queued' THEN NULL ELSE now() END, $4, $5, $6)
            ON CONFLICT (agent_id, external_run_id) WHERE external_run_id IS NOT NULL
            DO NOTHING
            RETURNING {RUN_COLUMNS}""",
        agent.id,
        agent.org_id,
        status,
        deadline,
        trigger_kind,
        external_run_id,
    )
    if row is not None:
        return run_from_row(row), True
    # Another request made it first (its insert has committed: ours waited for it).
    row = await db.fetchrow(
        f"SELECT {RUN_COLUMNS} FROM runs WHERE agent_id = $1 AND external_run_id = $2",
        agent.id,
        external_run_id,
    )
    assert row is not None
    return run_from_row(row), False


async def started_as(db: Executor, run_id: int, trigger_kind: str) -> bool:
    """Whether the run was started as ``trigger_kind`` (an execute, a trigger…)."""
    found = await db.fetchval(
        "SELECT true FROM runs WHERE id = $1 AND trigger_kind = $2", run_id, trigger_kind
    )
    return bool(found)
