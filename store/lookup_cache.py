"""The lookups every authenticated request makes, cached in the process and invalidated from
PostgreSQL on every replica.

What is cached: the organisation behind an ingest key (by the key's hash), the agent row (by its
id; the organisation check stays in Python, so a cached agent never answers for another
organisation) and the agent behind an agent API key (by the key's hash). Only hits are cached:
a key or agent created a moment ago is found at once, and a caller guessing keys costs one query
per guess as before.

How it stays true: triggers on ``agents`` and ``ingest_keys`` (migration 0005) send a
notification on ``CHANNEL`` for every row changed or deleted; each process holds one dedicated
connection that listens on it and drops the entries named. While that connection is down the
caches are cleared and bypassed (every lookup reads the row), and they are cleared once more
when it is back, since notifications sent meanwhile are gone. The TTL bounds how long an entry
can outlive a change whose notification never arrives.

A cached ``Agent`` is shared by every request that reads it: like every ``Agent``, it is
read-only (frozen, and nothing changes its dict fields in place).

A read racing an invalidation (it began before the row changed and ends after the notification
came) would cache what it read before the change; a generation counter, bumped by every
invalidation, keeps such a read from being stored.

Lookups that miss the same entry at the same moment share one read: a burst of calls with one
ingest key (or to one agent) would otherwise send one query each, all queueing for the pool just
when it is busiest. A lookup that begins after an invalidation never joins a read that began
before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import structlog
from cachetools import TTLCache

from store import agents, orgs
from store.models import Agent

log = structlog.get_logger("store.lookup_cache")

# The channel migration 0005's triggers notify. Payloads: ``agents:<id>``,
# ``ingest_keys:<hex of key_hash>``, and ``*`` (a table was truncated: drop everything).
CHANNEL = "auth_cache"
_EVERYTHING = "*"
# The listening connection is asked for a ``SELECT 1`` this often: a connection cut without a
# reset (a network partition) would otherwise look alive, and keep the caches on, for hours.
_HEALTH_CHECK_S = 5.0
_HEALTH_TIMEOUT_S = 5.0
_CONNECT_TIMEOUT_S = 10.0
_MAX_RECONNECT_S = 30.0
_APPLICATION_NAME = "agent-gateway-cache-listener"

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(slots=True)
class LookupStats:
    """What the caches answered: from memory, from the store, or from the store because the
    listener was down (or caching is off)."""

    hits: int = 0
    misses: int = 0
    bypassed: int = 0


class LookupCache:
    """The organisation and agent lookups of ``store.orgs``/``store.agents``, cached.

    With ``ttl_s == 0`` every lookup reads the store (and ``listen`` returns at once).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        ttl_s: float = 0.0,
        size: int = 10_000,
        database_url: str = "",
        reconnect_s: float = 1.0,
    ) -> None:
        self._pool = pool
        self._ttl_s = ttl_s
        self._database_url = database_url
        self._reconnect_s = reconnect_s
        capacity = max(1, size)
        ttl = max(ttl_s, 1e-9)
        self._orgs: TTLCache[bytes, uuid.UUID] = TTLCache(capacity, ttl)
        self._agents: TTLCache[int, Agent] = TTLCache(capacity, ttl)
        self._agents_by_key: TTLCache[bytes, Agent] = TTLCache(capacity, ttl)
        self._generation = 0
        # The reads in flight, by cache, key and the generation they began in.
        self._reading: dict[tuple[int, Hashable, int], asyncio.Future[Any]] = {}
        # Entries are served and stored only while the listener holds its connection.
        self._listening = False
        self._listener_pid: int | None = None
        self._held = False
        self._connections = 0
        self.stats = LookupStats()

    @property
    def enabled(self) -> bool:
        """Whether caching is configured (a TTL above 0)."""
        return self._ttl_s > 0

    @property
    def serving(self) -> bool:
        """Whether lookups are answered from memory now (the listener is connected)."""
        return self.enabled and self._listening

    @property
    def listener_pid(self) -> int | None:
        """The PostgreSQL backend of the listening connection, while it is up."""
        return self._listener_pid if self._listening else None

    # -- lookups ------------------------------------------------------------------------------

    async def org_for_ingest_key(self, key_hash: bytes) -> uuid.UUID | None:
        """The organisation of an unrevoked ingest key, or ``None`` (a miss is never kept)."""
        return await self._cached(
            self._orgs, key_hash, lambda: orgs.org_for_ingest_key(self._pool, key_hash)
        )

    async def agent_in_org(self, agent_id: int, org_id: uuid.UUID) -> Agent | None:
        """The agent with ``agent_id`` when it belongs to ``org_id``; ``None`` otherwise."""
        agent = await self._cached(
            self._agents, agent_id, lambda: agents.get_agent(self._pool, agent_id)
        )
        return agent if agent is not None and agent.org_id == org_id else None

    async def agent_by_api_key(self, api_key_hash: bytes) -> Agent | None:
        """The agent whose API key hashes to ``api_key_hash``, or ``None`` (a miss is never
        kept)."""
        return await self._cached(
            self._agents_by_key,
            api_key_hash,
            lambda: agents.get_agent_by_api_key(self._pool, api_key_hash),
        )

    async def _cached(
        self, cache: TTLCache[K, V], key: K, read: Callable[[], Awaitable[V | None]]
    ) -> V | None:
        if not self.serving:
            self.stats.bypassed += 1
            return await read()
        value = cache.get(key)
        if value is not None:
            self.stats.hits += 1
            return value
        self.stats.misses += 1
        generation = self._generation
        flight = (id(cache), key, generation)
        shared = self._reading.get(flight)
        if shared is None:
            shared = asyncio.ensure_future(self._read(cache, key, read, generation))
            self._reading[flight] = shared

            def settled(done: asyncio.Future[Any]) -> None:
                self._reading.pop(flight, None)
                # Its failure is seen even when every caller had left.
                if not done.cancelled():
                    done.exception()

            shared.add_done_callback(settled)
        # Shielded: a caller that leaves does not cancel the read the others wait for.
        shared_value: V | None = await asyncio.shield(shared)
        return shared_value

    async def _read(
        self,
        cache: TTLCache[K, V],
        key: K,
        read: Callable[[], Awaitable[V | None]],
        generation: int,
    ) -> V | None:
        value = await read()
        # Not stored when an invalidation came while the row was being read: what was read may
        # be the row as it was before that change.
        if value is not None and self.serving and generation == self._generation:
            cache[key] = value
        return value

    # -- invalidation -------------------------------------------------------------------------

    def invalidate_agent(self, agent_id: int) -> None:
        """Forget the agent ``agent_id`` (under its id and its API key)."""
        self._generation += 1
        self._agents.pop(agent_id, None)
        # Rare (an operator's change) against lookups on every request: a scan is cheaper
        # than keeping a second index. ``get``: an entry may expire while the scan runs.
        for key_hash in list(self._agents_by_key.keys()):
            agent = self._agents_by_key.get(key_hash)
            if agent is not None and agent.id == agent_id:
                self._agents_by_key.pop(key_hash, None)

    def invalidate_ingest_key(self, key_hash: bytes) -> None:
        """Forget the organisation of the ingest key hashing to ``key_hash``."""
        self._generation += 1
        self._orgs.pop(key_hash, None)

    def clear(self) -> None:
        """Forget everything."""
        self._generation += 1
        self._orgs.clear()
        self._agents.clear()
        self._agents_by_key.clear()

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        table, _, key = str(payload).partition(":")
        try:
            if table == _EVERYTHING:
                self.clear()
            elif table == "agents":
                self.invalidate_agent(int(key))
            elif table == "ingest_keys":
                self.invalidate_ingest_key(bytes.fromhex(key))
            else:
                self.clear()
        except ValueError:
            # A payload this version does not understand: forgetting everything is always safe.
            self.clear()

    # -- the listener -------------------------------------------------------------------------

    def _down(self, *, stopping: bool = False) -> None:
        if self._listening and not stopping:
            # The caches are bypassed from now until the listener is back.
            log.warning("lookup_cache_listener_down", pid=self._listener_pid)
        self._listening = False
        self._listener_pid = None
        self.clear()

    async def listen(self) -> None:
        """Hold the listening connection until cancelled, reconnecting with backoff.

        Run as a task for the life of the process; cancelling it closes the connection.
        """
        if not self.enabled:
            return
        delay = self._reconnect_s
        while True:
            self._held = False
            try:
                await self._hold_connection()
            except asyncio.CancelledError:
                self._down(stopping=True)
                raise
            # Whatever ends the connection (refused, cut, a failed health check), the caches
            # are off until it is back: the listener must outlive every error.
            except Exception as exc:
                log.warning("lookup_cache_listener_failed", error=repr(exc), retry_s=delay)
            self._down()
            if self._held:
                # It had been listening: a connection lost after a while is retried soon.
                delay = self._reconnect_s
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_RECONNECT_S)

    async def _hold_connection(self) -> None:
        """Listen until the connection is lost."""
        conn = await asyncpg.connect(
            self._database_url,
            timeout=_CONNECT_TIMEOUT_S,
            server_settings={"application_name": _APPLICATION_NAME},
        )
        lost = asyncio.Event()

        def terminated(_conn: Any) -> None:
            # Bypass at once: notifications stop with the connection.
            self._down()
            lost.set()

        conn.add_termination_listener(terminated)
        try:
            await conn.add_listener(CHANNEL, self._notified)
            # Changes made before LISTEN took effect were never notified to this connection.
            self.clear()
            self._listener_pid = conn.get_server_pid()
            self._listening = True
            self._held = True
            if self._connections:
                # The first connection is the normal case; a reconnection is worth a line.
                log.info("lookup_cache_listener_back", pid=self._listener_pid)
            self._connections += 1
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), _HEALTH_CHECK_S)
                if not lost.is_set():
                    await asyncio.wait_for(conn.fetchval("SELECT 1"), _HEALTH_TIMEOUT_S)
        finally:
            conn.remove_termination_listener(terminated)
            conn.terminate()
