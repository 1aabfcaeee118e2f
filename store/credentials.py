"""Credentials, sealed at rest (the cipher lives in gateway.security)."""

from __future__ import annotations

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
