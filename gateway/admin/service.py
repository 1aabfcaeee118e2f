"""Operator actions on organisations, keys, users and agents.

Shared by the ``/admin`` HTTP API and the ``agent-gateway admin`` console command.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.admin import bodies
from gateway.errors import BadRequest, NotFound
from gateway.security import apikeys
from gateway.security.cipher import CredentialCipher, CredentialUnreadable
from gateway.security.keyring import KeyRing
from gateway.security.runtime_secrets import SECRET_FIELDS, RuntimeSecrets
from gateway.validation import load
from store import agents, credentials, orgs
from store.lookup_cache import LookupCache
from store.models import Agent, IngestKey, Org
from store.pool import Executor


@dataclass(frozen=True, slots=True)
class CreatedOrg:
    """A new organisation: its id and name."""

    id: uuid.UUID
    name: str


@dataclass(frozen=True, slots=True)
class CreatedIngestKey:
    """A new ingest key, which is known only now (the store keeps a digest)."""

    id: uuid.UUID
    key: str


@dataclass(frozen=True, slots=True)
class CreatedAgent:
    """A new agent and its API key, which is known only now (the store keeps a digest)."""

    agent: Agent
    api_key: str


class AdminService:
    """Validates operator input and writes it to the store."""

    def __init__(
        self, pool: asyncpg.Pool, keys: KeyRing | str, lookups: LookupCache | None = None
    ) -> None:
        self._pool = pool
        # New agent keys are derived under the newest key of the ring.
        self._ring = KeyRing.of(keys)
        self._secret_key = self._ring.primary
        # The runtime's secrets are sealed for the agent's row before they are stored.
        self._runtime_secrets = RuntimeSecrets(CredentialCipher(self._ring))
        # This process's cache, told at once (other processes hear of it from PostgreSQL).
        self._lookups = lookups

    async def _require_org(self, org_id: uuid.UUID) -> None:
        if not await orgs.org_exists(self._pool, org_id):
            raise NotFound("Organisation not found")

    async def create_org(self, body: Any) -> CreatedOrg:
        """A new organisation from ``{name}``."""
        data = load(bodies.ORG_BODY, body)
        org_id = await orgs.create_org(self._pool, data["name"])
        return CreatedOrg(org_id, data["name"])

    async def list_orgs(self) -> list[Org]:
        """Every organisation, oldest first."""
        return await orgs.list_orgs(self._pool)

    async def create_ingest_key(self, org_id: uuid.UUID) -> CreatedIngestKey:
        """A new ingest key for the organisation, shown this once."""
        await self._require_org(org_id)
        key, digest = apikeys.new_ingest_key()
        key_id = await orgs.create_ingest_key(self._pool, org_id, digest, key[:8])
        return CreatedIngestKey(key_id, key)

    async def list_ingest_keys(self, org_id: uuid.UUID) -> list[IngestKey]:
        """The organisation's ingest keys, revoked ones included (their ids are what
        :meth:`revoke_ingest_key` takes); the keys themselves are not kept."""
        await self._require_org(org_id)
        return await orgs.list_ingest_keys(self._pool, org_id)

    async def create_user(self, org_id: uuid.UUID, body: Any) -> uuid.UUID:
        """The id of a new user from ``{email}``; the user becomes a member of the
        organisation."""
        await self._require_org(org_id)
        data = load(bodies.USER_BODY, body)
        user_id = await orgs.create_member(self._pool, org_id, data["email"])
        return user_id

    async def create_agent(self, org_id: uuid.UUID, body: Any) -> CreatedAgent:
        """An agent with its API key, shown this once."""
        await self._require_org(org_id)
        data = load(bodies.AGENT_BODY, body)
        await self._check_grants(org_id, data)
        salt = apikeys.new_agent_key_salt()
        api_key = apikeys.derive_agent_api_key(self._secret_key, salt)
        runtime = data.pop("runtime")
        async with self._pool.acquire() as conn, conn.transaction():
            # Inserted without its secrets: they are sealed for the id the row was given.
            created = await agents.create_agent(
                conn, org_id, salt, apikeys.hash_key(api_key), {**data, "runtime": {}}
            )
            agent = await self._store_runtime(conn, created.id, runtime)
        return CreatedAgent(agent, api_key)

    async def _store_runtime(self, conn: Executor, agent_id: int, runtime: dict[str, Any]) -> Agent:
        public, sealed = self._runtime_secrets.seal(agent_id, runtime)
        agent = await agents.set_runtime(conn, agent_id, public, sealed)
        if agent is None:
            raise NotFound("Agent not found")
        return agent

    async def list_agents(self, org_id: uuid.UUID) -> list[Agent]:
        """The organisation's agents, oldest first."""
        await self._require_org(org_id)
        return await agents.agents_in_org(self._pool, org_id)

    async def get_agent(self, agent_id: int) -> Agent:
        """One agent, of whichever organisation."""
        agent = await agents.get_agent(self._pool, agent_id)
        if agent is None:
            raise NotFound("Agent not found")
        return agent

    async def update_agent(self, agent_id: int, body: Any) -> Agent:
        """Change any of the agent's settings."""
        data = load(bodies.AGENT_BODY, body, partial=True)
        if "credential_ids" in data:
            await self._check_grants((await self.get_agent(agent_id)).org_id, data)
        async with self._pool.acquire() as conn, conn.transaction():
            runtime = data.pop("runtime", None)
            agent = await agents.update_agent(conn, agent_id, data)
            if agent is None:
                raise NotFound("Agent not found")
            if runtime is None and any(name in agent.runtime for name in SECRET_FIELDS):
                # A row from before sealing: its plaintext secrets are sealed on this write.
                runtime = agent.runtime
            if runtime is not None:
                agent = await self._store_runtime(conn, agent_id, runtime)
        if self._lookups is not None:
            self._lookups.invalidate_agent(agent_id)
        return agent

    async def rotate_agent_key(self, agent_id: int) -> CreatedAgent:
        """Give the agent a new API key, shown this once; the old one is refused from now on
        on every replica (the row's update is announced to every process's cache)."""
        salt = apikeys.new_agent_key_salt()
        api_key = apikeys.derive_agent_api_key(self._secret_key, salt)
        agent = await agents.set_api_key(self._pool, agent_id, salt, apikeys.hash_key(api_key))
        if agent is None:
            raise NotFound("Agent not found")
        if self._lookups is not None:
            self._lookups.invalidate_agent(agent_id)
        return CreatedAgent(agent, api_key)

    async def reseal_runtime_secrets(self) -> dict[str, Any]:
        """Seal every agent's runtime secrets under the newest key: how many agents held them
        in plaintext (``sealed``), how many under an older key (``resealed``), how many were
        already sealed under the newest or hold none (``current``), and the ids of those whose
        sealed values open under no key of the ring (left as they are).

        Running it twice does nothing the second time. A row changed meanwhile is left to
        its own write (which seals it).
        """
        counts: dict[str, Any] = {"sealed": 0, "resealed": 0, "current": 0, "unreadable": []}
        for agent_id, runtime, sealed in await agents.stored_runtimes(self._pool):
            if not self._runtime_secrets.needs_reseal(runtime, sealed):
                counts["current"] += 1
                continue
            plaintext = any(name in runtime for name in SECRET_FIELDS)
            try:
                public, resealed = self._runtime_secrets.seal(
                    agent_id, agents.with_sealed(runtime, agent_id, sealed)
                )
            except CredentialUnreadable:
                counts["unreadable"].append(agent_id)
                continue
            changed = await agents.set_runtime(
                self._pool, agent_id, public, resealed, if_runtime=runtime, if_sealed=sealed
            )
            if changed is not None:
                counts["sealed" if plaintext else "resealed"] += 1
                if self._lookups is not None:
                    self._lookups.invalidate_agent(agent_id)
        return counts

    async def agents_on_old_keys(self) -> list[int]:
        """The agents whose API key was derived under a key other than the newest: rotate
        them before that key is retired (its removal would leave their runs' trigger payloads
        with a key the gateway refuses)."""
        return [
            agent_id
            for agent_id, salt, digest in await agents.api_key_digests(self._pool)
            if apikeys.agent_api_key(KeyRing(self._ring.primary), salt, digest) is None
        ]

    async def _check_grants(self, org_id: uuid.UUID, data: dict[str, Any]) -> None:
        """A grant list names credentials of the agent's own organisation only (400 otherwise,
        the same for another organisation's credential as for one that does not exist)."""
        if "credential_ids" not in data:
            return
        wanted = list(dict.fromkeys(data["credential_ids"]))
        data["credential_ids"] = wanted
        known = await credentials.existing_ids(self._pool, org_id, wanted)
        unknown = [str(c) for c in wanted if c not in known]
        if unknown:
            raise BadRequest(
                "Invalid request body",
                extra={"details": {"credential_ids": [f"No such credential: {unknown[0]}"]}},
            )

    async def revoke_ingest_key(self, org_id: uuid.UUID, key_id: uuid.UUID) -> None:
        """Revoke one of the organisation's ingest keys: refused from now on, on every replica.

        Revoking a key twice is no error (the first time is kept); 404 for a key the
        organisation does not have.
        """
        key_hash = await orgs.revoke_ingest_key(self._pool, org_id, key_id)
        if key_hash is None:
            raise NotFound("Ingest key not found")
        if self._lookups is not None:
            self._lookups.invalidate_ingest_key(key_hash)
