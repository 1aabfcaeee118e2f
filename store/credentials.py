"""Credentials, sealed at rest (the cipher lives in gateway.security)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from store.pool import Executor


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


@dataclass(frozen=True, slots=True)
class CredentialInfo:
    """A credential as an operator lists it: never its data."""

    id: uuid.UUID
    org_id: uuid.UUID
    name: str
    type: str
    created_at: dt.datetime
    updated_at: dt.datetime


async def list_credentials(db: Executor, org_id: uuid.UUID) -> list[CredentialInfo]:
    """The organisation's credentials, oldest first, without their data."""
    rows = await db.fetch(
        """SELECT id, org_id, name, type, created_at, updated_at FROM credentials
           WHERE org_id = $1 ORDER BY created_at, id""",
        org_id,
    )
    return [CredentialInfo(**dict(row)) for row in rows]


async def existing_ids(
    db: Executor, org_id: uuid.UUID, credential_ids: list[uuid.UUID]
) -> set[uuid.UUID]:
    """Which of ``credential_ids`` are credentials of ``org_id``."""
    rows = await db.fetch(
        "SELECT id FROM credentials WHERE org_id = $1 AND id = ANY ($2::uuid[])",
        org_id,
        credential_ids,
    )
    return {row["id"] for row in rows}


async def replace_sealed_data(
    db: Executor, org_id: uuid.UUID, credential_id: uuid.UUID, sealed_data: bytes
) -> CredentialInfo | None:
    """Put new sealed data on the organisation's credential (same id); ``None`` when it has
    no such credential."""
    row = await db.fetchrow(
        """UPDATE credentials SET sealed_data = $3, updated_at = now()
           WHERE id = $2 AND org_id = $1
           RETURNING id, org_id, name, type, created_at, updated_at""",
        org_id,
        credential_id,
        sealed_data,
    )
    return None if row is None else CredentialInfo(**dict(row))


async def delete_credential(db: Executor, org_id: uuid.UUID, credential_id: uuid.UUID) -> bool:
    """Delete the organisation's credential; whether it had one."""
    deleted = await db.fetchval(
        "DELETE FROM credentials WHERE id = $2 AND org_id = $1 RETURNING id",
        org_id,
        credential_id,
    )
    return deleted is not None


async def all_sealed(db: Executor) -> list[SealedCredential]:
    """Every credential row, sealed (the re-seal command walks them)."""
    rows = await db.fetch("SELECT id, org_id, name, type, sealed_data FROM credentials")
    return [SealedCredential(**dict(row)) for row in rows]
