"""The SQL the gateway runs against PostgreSQL, one function per question."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from store.enums import AgentStatus, ManagedBy, OutputKind, RunStatus
from store.models import Agent, Run

_AGENT_COLUMNS = """id, org_id, name, managed_by, status, allow_external_triggers, output_kind,
    runtime, default_input, input_format, running_timeout_ms, created_at, updated_at,
    api_key_salt, blocks"""

_RUN_COLUMNS = """id, agent_id, org_id, status, input, output_data, outputs, error, duration_ms,
    started_at, completed_at, created_at, created_by, external_run_id, runtime_run_id, deadline,
    waiting_for"""

# Columns an operator may set on an agent (the admin API and the console command).
AGENT_FIELDS = (
    "name",
    "managed_by",
    "status",
    "allow_external_triggers",
    "output_kind",
    "runtime",
    "default_input",
    "input_format",
    "running_timeout_ms",
    "blocks",
)

Executor = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy


def _agent(row: asyncpg.Record) -> Agent:
    values = dict(row)
    values["managed_by"] = ManagedBy(values["managed_by"])
    values["status"] = AgentStatus(values["status"])
    values["output_kind"] = OutputKind(values["output_kind"])
    return Agent(**values)


def _run(row: asyncpg.Record) -> Run:
    values = dict(row)
    values["status"] = RunStatus(values["status"])
    return Run(**values)


async def create_org(db: Executor, name: str) -> uuid.UUID:
    """Create an organisation and return its id."""
    org_id = uuid.uuid4()
    await db.execute("INSERT INTO orgs (id, name) VALUES ($1, $2)", org_id, name)
    return org_id


async def org_exists(db: Executor, org_id: uuid.UUID) -> bool:
    """Whether ``org_id`` names an organisation."""
    return bool(await db.fetchval("SELECT EXISTS (SELECT 1 FROM orgs WHERE id = $1)", org_id))


async def create_ingest_key(
    db: Executor, org_id: uuid.UUID, key_hash: bytes, prefix: str
) -> uuid.UUID:
    """Record an ingest key (by its hash) for ``org_id``."""
    key_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO ingest_keys (id, org_id, key_hash, key_prefix) VALUES ($1, $2, $3, $4)",
        key_id,
        org_id,
        key_hash,
        prefix,
    )
    return key_id


async def org_for_ingest_key(db: Executor, key_hash: bytes) -> uuid.UUID | None:
    """The organisation an unrevoked ingest key belongs to, or ``None``."""
    value = await db.fetchval(
        "SELECT org_id FROM ingest_keys WHERE key_hash = $1 AND revoked_at IS NULL", key_hash
    )
    return value if isinstance(value, uuid.UUID) else None


async def create_member(db: Executor, org_id: uuid.UUID, email: str) -> uuid.UUID:
    """Create (or find) the user with ``email`` and make them a member of ``org_id``."""
    user_id: uuid.UUID = await db.fetchval(
        """WITH u AS (
               INSERT INTO users (id, email) VALUES ($2, $3)
               ON CONFLICT (email) DO UPDATE SET email = EXCLUDED.email
               RETURNING id),
           m AS (
               INSERT INTO memberships (org_id, user_id) SELECT $1, id FROM u
               ON CONFLICT DO NOTHING)
           SELECT id FROM u""",
        org_id,
        uuid.uuid4(),
        email,
    )
    return user_id


async def is_member(db: Executor, org_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    """Whether ``user_id`` is a member of ``org_id``."""
    return bool(
        await db.fetchval(
            "SELECT EXISTS (SELECT 1 FROM memberships WHERE org_id = $1 AND user_id = $2)",
            org_id,
            user_id,
        )
    )


async def create_agent(
    db: Executor,
    org_id: uuid.UUID,
    api_key_salt: bytes,
    api_key_hash: bytes,
    fields: dict[str, Any],
) -> Agent:
    """Insert an agent with the given column values (defaults for the rest)."""
    names = [n for n in AGENT_FIELDS if n in fields]
    columns = ", ".join(["org_id", "api_key_salt", "api_key_hash", *names])
    placeholders = ", ".join(f"${i}" for i in range(1, len(names) + 4))
    row = await db.fetchrow(
        f"INSERT INTO agents ({columns}) VALUES ({placeholders}) RETURNING {_AGENT_COLUMNS}",
        org_id,
        api_key_salt,
        api_key_hash,
        *(fields[n] for n in names),
    )
    assert row is not None
    return _agent(row)


async def update_agent(db: Executor, agent_id: int, fields: dict[str, Any]) -> Agent | None:
    """Change the given columns of an agent; ``None`` when it does not exist."""
    names = [n for n in AGENT_FIELDS if n in fields]
    assignments = ", ".join(f"{n} = ${i}" for i, n in enumerate(names, start=2))
    sets = f"{assignments}, updated_at = now()" if names else "updated_at = now()"
    row = await db.fetchrow(
        f"UPDATE agents SET {sets} WHERE id = $1 RETURNING {_AGENT_COLUMNS}",
        agent_id,
        *(fields[n] for n in names),
    )
    return None if row is None else _agent(row)


async def get_agent_in_org(db: Executor, agent_id: int, org_id: uuid.UUID) -> Agent | None:
    """The agent with ``agent_id`` when it belongs to ``org_id``; ``None`` otherwise."""
    row = await db.fetchrow(
        f"SELECT {_AGENT_COLUMNS} FROM agents WHERE id = $1 AND org_id = $2", agent_id, org_id
    )
    return None if row is None else _agent(row)


async def get_agent_by_api_key(db: Executor, api_key_hash: bytes) -> Agent | None:
    """The agent whose API key hashes to ``api_key_hash``."""
    row = await db.fetchrow(
        f"SELECT {_AGENT_COLUMNS} FROM agents WHERE api_key_hash = $1", api_key_hash
    )
    return None if row is None else _agent(row)


async def insert_run(
    db: Executor,
    *,
    agent: Agent,
    input_data: dict[str, Any],
    created_by: uuid.UUID | None,
    deadline: dt.datetime,
    trigger_kind: str,
) -> Run:
    """Create a run row in ``queued``; its id is needed before anything else happens."""
    row = await db.fetchrow(
        f"""INSERT INTO runs (agent_id, org_id, input, created_by, deadline, trigger_kind)
            VALUES ($1, $2, $3, $4, $5, $6)
            RETURNING {_RUN_COLUMNS}""",
        agent.id,
        agent.org_id,
        input_data,
        created_by,
        deadline,
        trigger_kind,
    )
    assert row is not None
    return _run(row)


async def get_run_of_agent(db: Executor, agent_id: int, run_id: int) -> Run | None:
    """The run with ``run_id`` when it is a run of ``agent_id``."""
    row = await db.fetchrow(
        f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = $1 AND agent_id = $2", run_id, agent_id
    )
    return None if row is None else _run(row)


async def get_run(db: Executor, run_id: int) -> Run | None:
    """The run with ``run_id``, whoever owns it."""
    row = await db.fetchrow(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = $1", run_id)
    return None if row is None else _run(row)


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


@dataclass(frozen=True, slots=True)
class FollowedRun:
    """A run whose runtime runs it on its own, claimed for one poll."""

    run_id: int
    agent_id: int
    status: str
    runtime: dict[str, Any]
    runtime_run_id: str
    attempts: int


async def start_following(
    db: Executor, run_id: int, runtime_run_id: str, *, first_poll_in_s: float
) -> None:
    """Record the runtime's id for a run and, while it is in flight, schedule its first poll.

    The id is kept even for a run that has already ended (cancelled while its trigger call was
    on its way): it is what asking the runtime to cancel needs.
    """
    await db.execute(
        """UPDATE runs SET runtime_run_id = $2,
               follow_at = CASE WHEN status IN ('queued', 'running', 'waiting')
                                THEN now() + make_interval(secs => $3) END,
               follow_attempts = 0, updated_at = now()
           WHERE id = $1""",
        run_id,
        runtime_run_id,
        first_poll_in_s,
    )


async def claim_runs_to_follow(db: Executor, *, lease_s: float, limit: int) -> list[FollowedRun]:
    """Claim up to ``limit`` runs whose poll is due; their next poll moves ``lease_s`` ahead
    so no other replica polls them meanwhile."""
    rows = await db.fetch(
        """UPDATE runs AS r
           SET follow_at = now() + make_interval(secs => $1),
               follow_attempts = r.follow_attempts + 1
           FROM agents AS a
           WHERE a.id = r.agent_id AND r.id IN (
               SELECT id FROM runs
               WHERE follow_at <= now() AND status IN ('queued', 'running', 'waiting')
               ORDER BY follow_at
               LIMIT $2
               FOR UPDATE SKIP LOCKED)
           RETURNING r.id, r.agent_id, r.status, a.runtime, r.runtime_run_id,
                     r.follow_attempts""",
        lease_s,
        limit,
    )
    return [
        FollowedRun(
            run_id=row["id"],
            agent_id=row["agent_id"],
            status=row["status"],
            runtime=row["runtime"],
            runtime_run_id=row["runtime_run_id"],
            attempts=row["follow_attempts"],
        )
        for row in rows
        if row["runtime_run_id"]
    ]


async def schedule_follow(db: Executor, run_id: int, *, in_s: float) -> None:
    """Set a followed run's next poll ``in_s`` seconds from now."""
    await db.execute(
        """UPDATE runs SET follow_at = now() + make_interval(secs => $2)
           WHERE id = $1 AND follow_at IS NOT NULL""",
        run_id,
        in_s,
    )


async def stop_following(db: Executor, run_id: int) -> None:
    """No more polls for this run (its end is recorded or on its way)."""
    await db.execute("UPDATE runs SET follow_at = NULL WHERE id = $1", run_id)


async def release_follows(db: Executor, run_ids: list[int]) -> None:
    """Make these followed runs due now, for any replica to take (this one is stopping)."""
    await db.execute(
        "UPDATE runs SET follow_at = now() WHERE id = ANY($1) AND follow_at IS NOT NULL", run_ids
    )


@dataclass(frozen=True, slots=True)
class SealedCredential:
    """A credential row; its data still sealed."""

    id: uuid.UUID
    org_id: uuid.UUID
    name: str
    type: str
    sealed_data: bytes


async def create_credential(
    db: Executor,
    *,
    credential_id: uuid.UUID,
    org_id: uuid.UUID,
    name: str,
    type_: str,
    sealed_data: bytes,
) -> None:
    """Store a credential whose data is already sealed."""
    await db.execute(
        """INSERT INTO credentials (id, org_id, name, type, sealed_data)
           VALUES ($1, $2, $3, $4, $5)""",
        credential_id,
        org_id,
        name,
        type_,
        sealed_data,
    )


async def get_credential(db: Executor, credential_id: uuid.UUID) -> SealedCredential | None:
    """The credential row with ``credential_id``, whichever organisation owns it."""
    row = await db.fetchrow(
        "SELECT id, org_id, name, type, sealed_data FROM credentials WHERE id = $1",
        credential_id,
    )
    return None if row is None else SealedCredential(**dict(row))


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
            RETURNING {_RUN_COLUMNS}""",
        agent.id,
        agent.org_id,
        status,
        deadline,
        trigger_kind,
        external_run_id,
    )
    if row is not None:
        return _run(row), True
    # Another request made it first (its insert has committed: ours waited for it).
    row = await db.fetchrow(
        f"SELECT {_RUN_COLUMNS} FROM runs WHERE agent_id = $1 AND external_run_id = $2",
        agent.id,
        external_run_id,
    )
    assert row is not None
    return _run(row), False
