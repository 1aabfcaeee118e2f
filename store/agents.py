"""Agents: the row an operator configures, and the lookups a run starts from."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import asyncpg

from store.enums import AgentStatus, ManagedBy, OutputKind
from store.models import AGENT_SETTABLE_FIELDS, Agent
from store.pool import Executor

# ``runtime_secrets`` (migration 0009) is no field of ``Agent``: it travels in ``runtime``.
_AGENT_COLUMNS = ", ".join(
    [*(column.name for column in dataclasses.fields(Agent)), "runtime_secrets"]
)

# Where the sealed runtime secrets sit in an ``Agent``'s ``runtime`` in memory (never stored
# there): ``{"agent_id": <the row's id>, "<field>": "<base64 sealed value>", ...}``. The row's
# own id is what the seal is checked against, so a value copied to another row does not open.
SEALED = "_sealed"


def with_sealed(
    runtime: dict[str, Any], agent_id: int, sealed: dict[str, Any] | None
) -> dict[str, Any]:
    """The runtime as the gateway holds it: the stored one with its row's sealed secrets."""
    runtime = {k: v for k, v in runtime.items() if k != SEALED}
    if sealed:
        runtime[SEALED] = {**sealed, "agent_id": agent_id}
    return runtime


def _agent(row: asyncpg.Record) -> Agent:
    values = dict(row)
    values["runtime"] = with_sealed(values["runtime"], values["id"], values.pop("runtime_secrets"))
    values["managed_by"] = ManagedBy(values["managed_by"])
    values["status"] = AgentStatus(values["status"])
    values["output_kind"] = OutputKind(values["output_kind"])
    values["credential_ids"] = list(values["credential_ids"] or [])
    return Agent(**values)


async def create_agent(
    db: Executor,
    org_id: uuid.UUID,
    api_key_salt: bytes,
    api_key_hash: bytes,
    fields: dict[str, Any],
) -> Agent:
    """Insert an agent with the given column values (defaults for the rest)."""
    names = [n for n in AGENT_SETTABLE_FIELDS if n in fields]
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
    names = [n for n in AGENT_SETTABLE_FIELDS if n in fields]
    assignments = ", ".join(f"{n} = ${i}" for i, n in enumerate(names, start=2))
    sets = f"{assignments}, updated_at = now()" if names else "updated_at = now()"
    row = await db.fetchrow(
        f"UPDATE agents SET {sets} WHERE id = $1 RETURNING {_AGENT_COLUMNS}",
        agent_id,
        *(fields[n] for n in names),
    )
    return None if row is None else _agent(row)


async def set_api_key(
    db: Executor, agent_id: int, api_key_salt: bytes, api_key_hash: bytes
) -> Agent | None:
    """Give the agent a new API key (its salt and digest); ``None`` when it does not exist.

    The row's update is announced on the cache channel (migration 0005), so every replica
    forgets the old key's agent at commit.
    """
    row = await db.fetchrow(
        f"""UPDATE agents SET api_key_salt = $2, api_key_hash = $3, updated_at = now()
            WHERE id = $1 RETURNING {_AGENT_COLUMNS}""",
        agent_id,
        api_key_salt,
        api_key_hash,
    )
    return None if row is None else _agent(row)


async def set_runtime(
    db: Executor,
    agent_id: int,
    runtime: dict[str, Any],
    sealed: dict[str, str],
    *,
    if_runtime: dict[str, Any] | None = None,
    if_sealed: dict[str, Any] | None = None,
) -> Agent | None:
    """Store the agent's runtime (without its secrets) and its sealed secrets; ``None`` when
    the agent does not exist or, given ``if_runtime``/``if_sealed``, no longer holds those."""
    guard = ""
    args: list[Any] = [agent_id, runtime, sealed]
    if if_runtime is not None:
        args += [if_runtime, if_sealed or {}]
        guard = " AND runtime = $4 AND runtime_secrets = $5"
    row = await db.fetchrow(
        f"""UPDATE agents SET runtime = $2, runtime_secrets = $3, updated_at = now()
            WHERE id = $1{guard} RETURNING {_AGENT_COLUMNS}""",
        *args,
    )
    return None if row is None else _agent(row)


async def stored_runtimes(db: Executor) -> list[tuple[int, dict[str, Any], dict[str, Any]]]:
    """``(id, runtime, runtime_secrets)`` of every agent, as stored, by id."""
    rows = await db.fetch("SELECT id, runtime, runtime_secrets FROM agents ORDER BY id")
    return [(int(r["id"]), r["runtime"], r["runtime_secrets"]) for r in rows]


async def revoke_credential_grants(db: Executor, credential_id: uuid.UUID) -> None:
    """Take a credential off every agent's grant list (it is being deleted)."""
    await db.execute(
        """UPDATE agents SET credential_ids = array_remove(credential_ids, $1),
                             updated_at = now()
           WHERE $1 = ANY (credential_ids)""",
        credential_id,
    )


async def get_agent(db: Executor, agent_id: int) -> Agent | None:
    """The agent with ``agent_id``, of whichever organisation (the caller checks it)."""
    row = await db.fetchrow(f"SELECT {_AGENT_COLUMNS} FROM agents WHERE id = $1", agent_id)
    return None if row is None else _agent(row)


async def agents_in_org(db: Executor, org_id: uuid.UUID) -> list[Agent]:
    """The organisation's agents, oldest first."""
    rows = await db.fetch(
        f"SELECT {_AGENT_COLUMNS} FROM agents WHERE org_id = $1 ORDER BY id", org_id
    )
    return [_agent(row) for row in rows]


async def get_agent_by_api_key(db: Executor, api_key_hash: bytes) -> Agent | None:
    """The agent whose API key hashes to ``api_key_hash``."""
    row = await db.fetchrow(
        f"SELECT {_AGENT_COLUMNS} FROM agents WHERE api_key_hash = $1", api_key_hash
    )
    return None if row is None else _agent(row)


async def agent_ids_in_org(db: Executor, org_id: uuid.UUID, *, limit: int) -> list[int]:
    """The ids of ``org_id``'s agents, oldest first, at most ``limit`` of them."""
    rows = await db.fetch(
        "SELECT id FROM agents WHERE org_id = $1 ORDER BY id LIMIT $2", org_id, limit
    )
    return [int(row["id"]) for row in rows]


async def api_key_digests(db: Executor) -> list[tuple[int, bytes, bytes]]:
    """``(id, api_key_salt, api_key_hash)`` of every agent, by id."""
    rows = await db.fetch("SELECT id, api_key_salt, api_key_hash FROM agents ORDER BY id")
    return [(int(r["id"]), bytes(r["api_key_salt"]), bytes(r["api_key_hash"])) for r in rows]
