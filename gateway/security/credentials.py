"""Credentials: stored sealed, resolved only for a run that holds a valid credentials token.

``GET /api/credentials/{id}/resolve`` answers a credential's data when all of these hold:
the agent API key names an agent (else 401) that is active (else 403: a paused or archived
agent resolves nothing); ``X-Credentials-Token`` is a token this gateway issued and has not
expired (else 401); the token's run is a run of that agent (else 403) and has not ended (else
403); the credential exists in the agent's organisation (else 404, as for anything of another
organisation) and is on the agent's grant list, its ``credential_ids`` setting (else 403).
Every refusal leaves a ``credential_resolve_refused`` log
line with the reason and the ids involved, never a key, a token or the data.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from marshmallow import RAISE, fields, validate

from gateway.errors import ApiError, Forbidden, NotFound
from gateway.security.cipher import CredentialCipher, CredentialUnreadable
from gateway.security.keyring import key_ring
from gateway.settings import Settings
from gateway.validation import NAME, JsonObject, StorableBody, load
from store import agents, credentials, orgs, runs
from store.enums import AgentStatus
from store.models import Agent

log = structlog.get_logger(__name__)


class CredentialBody(StorableBody):
    """``POST /admin/orgs/{orgId}/credentials``: the data is any JSON object, sealed at rest."""

    class Meta:
        unknown = RAISE

    name = NAME
    type = fields.String(
        required=True, validate=validate.Length(min=1, max=100), metadata={"examples": ["api_key"]}
    )
    data = JsonObject(required=True, metadata={"description": "Any JSON object."})


class CredentialDataBody(StorableBody):
    """``PUT /admin/orgs/{orgId}/credentials/{credentialId}/data``: the new data (rotation)."""

    class Meta:
        unknown = RAISE

    data = JsonObject(required=True, metadata={"description": "Any JSON object."})


# Built once: a marshmallow schema costs more to construct than to load a body with.
CREDENTIAL_BODY = CredentialBody()
CREDENTIAL_DATA_BODY = CredentialDataBody()


@dataclass(frozen=True, slots=True)
class CreatedCredential:
    """A new credential: what an operator may see of it (never its data)."""

    id: uuid.UUID
    name: str
    type: str


@dataclass(frozen=True, slots=True)
class ResolvedCredential:
    """A credential opened for one run."""

    id: uuid.UUID
    name: str
    type: str
    data: Any


class CredentialService:
    """Creates credentials (sealed) and resolves them for runs."""

    def __init__(self, pool: asyncpg.Pool, cipher: CredentialCipher) -> None:
        self._pool = pool
        self._cipher = cipher

    @classmethod
    def for_settings(cls, pool: asyncpg.Pool, settings: Settings) -> CredentialService:
        """The service keyed from ``SECRET_KEY``."""
        return cls(pool, CredentialCipher(key_ring(settings)))

    async def create(self, org_id: uuid.UUID, body: Any) -> CreatedCredential:
        """A new credential from ``{name, type, data}``; the data is sealed before it is
        stored."""
        if not await orgs.org_exists(self._pool, org_id):
            raise NotFound("Organisation not found")
        data = load(CREDENTIAL_BODY, body)
        credential_id = uuid.uuid4()
        await credentials.create_credential(
            self._pool,
            credential_id=credential_id,
            org_id=org_id,
            name=data["name"],
            type_=data["type"],
            sealed_data=self._cipher.seal(credential_id, org_id, data["data"]),
        )
        return CreatedCredential(credential_id, data["name"], data["type"])

    async def list(self, org_id: uuid.UUID) -> list[credentials.CredentialInfo]:
        """The organisation's credentials: ids, names, types and times, never their data."""
        if not await orgs.org_exists(self._pool, org_id):
            raise NotFound("Organisation not found")
        return await credentials.list_credentials(self._pool, org_id)

    async def rotate(
        self, org_id: uuid.UUID, credential_id: uuid.UUID, body: Any
    ) -> credentials.CredentialInfo:
        """New data for the organisation's credential, same id (grants and references stay)."""
        data = load(CREDENTIAL_DATA_BODY, body)
        sealed = self._cipher.seal(credential_id, org_id, data["data"])
        info = await credentials.replace_sealed_data(self._pool, org_id, credential_id, sealed)
        if info is None:
            raise NotFound("Credential not found")
        log.info("credential_rotated", credential=str(credential_id), org_id=str(org_id))
        return info

    async def delete(self, org_id: uuid.UUID, credential_id: uuid.UUID) -> None:
        """Delete the organisation's credential and take it off every agent's grant list."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await credentials.delete_credential(conn, org_id, credential_id):
                raise NotFound("Credential not found")
            await agents.revoke_credential_grants(conn, credential_id)
        log.info("credential_deleted", credential=str(credential_id), org_id=str(org_id))

    async def reseal(self) -> dict[str, Any]:
        """Seal every credential again under the newest key: how many were, how many already
        were, and the ids of those that open under no key of the ring (left as they are).

        A value already under the newest key is left alone, so running it twice does nothing
        the second time.
        """
        counts: dict[str, Any] = {"resealed": 0, "current": 0, "unreadable": []}
        for row in await credentials.all_sealed(self._pool):
            if self._cipher.is_current(row.sealed_data):
                counts["current"] += 1
                continue
            try:
                data = self._cipher.open(row.id, row.org_id, row.sealed_data)
            except CredentialUnreadable:
                counts["unreadable"].append(str(row.id))
                continue
            sealed = self._cipher.seal(row.id, row.org_id, data)
            await credentials.replace_sealed_data(self._pool, row.org_id, row.id, sealed)
            counts["resealed"] += 1
        return counts

    @staticmethod
    def refusals(raw_id: str) -> Callable[..., None]:
        """Where the refusals of a resolve of ``raw_id`` are logged (the authentication
        helpers report theirs here too): a ``credential_resolve_refused`` line each."""
        credential = raw_id[:64]  # it is logged: a path segment can hold anything
        return lambda reason, **ids: _refused(reason, credential=credential, **ids)

    def admit(self, agent: Agent, raw_id: str) -> None:
        """403 for an agent that is not active: a paused or archived agent resolves nothing."""
        if agent.status != AgentStatus.ACTIVE:
            raise _refusal(
                Forbidden(f"The agent is {agent.status}: it resolves no credentials"),
                "agent_not_active",
                credential=raw_id[:64],
                agent_id=agent.id,
            )

    async def resolve(self, raw_id: str, agent: Agent, run_id: int) -> ResolvedCredential:
        """The credential ``raw_id`` for ``agent``'s run ``run_id`` (the caller authenticated
        by the agent's API key and the run's credentials token); see the module."""
        raw_id = raw_id[:64]  # it is logged: a path segment can hold anything
        ids = {"credential": raw_id, "agent_id": agent.id, "run_id": run_id}
        run = await runs.get_run(self._pool, run_id)
        if run is None or run.agent_id != agent.id:
            raise _refusal(
                Forbidden("The credentials token is for a run of another agent"),
                "run_of_another_agent",
                **ids,
            )
        if run.terminal:
            raise _refusal(
                Forbidden(f"The token's run has ended ({run.status})"), "run_ended", **ids
            )
        try:
            credential_id = uuid.UUID(raw_id)
        except ValueError:
            raise _refusal(NotFound("Credential not found"), "malformed_id", **ids) from None
        row = await credentials.get_credential(self._pool, credential_id)
        if row is None or row.org_id != agent.org_id:
            # Another organisation's credential is as absent as one that never existed.
            reason = "not_found" if row is None else "other_organisation"
            raise _refusal(NotFound("Credential not found"), reason, **ids)
        if row.id not in agent.credential_ids:
            raise _refusal(
                Forbidden("The credential is not granted to this agent (its credential_ids)"),
                "not_granted",
                **ids,
            )
        try:
            data = self._cipher.open(row.id, row.org_id, row.sealed_data)
        except CredentialUnreadable as exc:
            # Only a changed SECRET_KEY or an altered row gets here: an operator's problem.
            log.error("credential_unreadable", credential=raw_id, problem=str(exc))
            raise ApiError(
                "The credential cannot be opened with this gateway's SECRET_KEY"
            ) from None
        log.info("credential_resolved", **ids)
        return ResolvedCredential(id=row.id, name=row.name, type=row.type, data=data)


def _refused(reason: str, **ids: Any) -> None:
    log.warning("credential_resolve_refused", reason=reason, **ids)


def _refusal(error: ApiError, reason: str, **ids: Any) -> ApiError:
    _refused(reason, status=error.status, **ids)
    return error
