"""Organisations, their ingest keys and their members."""

from __future__ import annotations

import uuid

from store.models import IngestKey, Org
from store.pool import Executor


async def create_org(db: Executor, name: str) -> uuid.UUID:
    """Create an organisation and return its id."""
    org_id = uuid.uuid4()
    await db.execute("INSERT INTO orgs (id, name) VALUES ($1, $2)", org_id, name)
    return org_id


async def org_exists(db: Executor, org_id: uuid.UUID) -> bool:
    """Whether ``org_id`` names an organisation."""
    return bool(await db.fetchval("SELECT EXISTS (SELECT 1 FROM orgs WHERE id = $1)", org_id))


async def list_orgs(db: Executor) -> list[Org]:
    """Every organisation, oldest first."""
    rows = await db.fetch("SELECT id, name, created_at FROM orgs ORDER BY created_at, id")
    return [Org(**dict(row)) for row in rows]


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


async def list_ingest_keys(db: Executor, org_id: uuid.UUID) -> list[IngestKey]:
    """The organisation's ingest keys, revoked ones included, oldest first."""
    rows = await db.fetch(
        """SELECT id, org_id, key_prefix AS prefix, created_at, revoked_at FROM ingest_keys
           WHERE org_id = $1 ORDER BY created_at, id""",
        org_id,
    )
    return [IngestKey(**dict(row)) for row in rows]


async def revoke_ingest_key(db: Executor, org_id: uuid.UUID, key_id: uuid.UUID) -> bytes | None:
    """Revoke the ingest key ``key_id`` of ``org_id`` (once: a second revoke keeps the first
    time); the key's hash, or ``None`` when the organisation has no such key."""
    value = await db.fetchval(
        """UPDATE ingest_keys SET revoked_at = coalesce(revoked_at, now())
           WHERE id = $1 AND org_id = $2 RETURNING key_hash""",
        key_id,
        org_id,
    )
    return value if isinstance(value, bytes) else None


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
