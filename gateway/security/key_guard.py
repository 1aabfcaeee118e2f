"""Brute-force protection: failed key attempts are limited per client address.

Every request to a route that takes a key, when it presents one (``Authorization`` or
``X-API-Key``), first looks at its client address's bucket of failed attempts, without taking
from it. A request whose key is refused (401) takes a token. Once an address has spent
``AUTH_FAILURE_LIMIT`` tokens in ``AUTH_FAILURE_WINDOW_S``, every such request from it is
answered 429 before its key is even looked at, until the bucket refills: guessing is slowed to
the refill rate, and a right guess made meanwhile is refused like a wrong one. Requests with a
valid key spend nothing. The buckets are the same Redis token buckets as the per-agent rate
limits (Redis's clock, shared by every replica); when Redis cannot answer, the guard admits
(fails open).

Keys themselves are compared in constant time where it matters: ingest and agent API keys are
looked up by their SHA-256 digest (the lookup's timing depends on the digest, which an attacker
cannot steer toward a stored one), and the admin token with ``hmac.compare_digest``.

The client address is the connection's peer, or, when the peer is one of ``TRUSTED_PROXIES``,
the rightmost ``X-Forwarded-For`` hop that is not a trusted proxy (what the outermost trusted
proxy saw; hops further left are the caller's to invent), or the leftmost hop when every hop
is itself a trusted address. IPv6 clients are counted per /64. The first request that carries
``X-Forwarded-For`` from a peer that is not trusted is logged as a warning: behind such a
proxy every caller shares the proxy's bucket.
Every authenticated handler takes the guard as a step of its authentication
(``gateway.http.access.authentication.KeyGuardStep``).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable

import structlog

from gateway.errors import RateLimited
from gateway.security.ratelimit import Decision, RateLimiter, Take

log = structlog.get_logger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class KeyGuard:
    """Counts failed key attempts per client address and refuses addresses over the limit."""

    def __init__(
        self,
        limiter: RateLimiter,
        *,
        limit: int,
        window_s: int,
        trusted_proxies: Iterable[str] = (),
    ) -> None:
        self._limiter = limiter
        self._limit = limit
        self._window_s = window_s
        self._trusted: tuple[Network, ...] = tuple(
            ipaddress.ip_network(item, strict=False) for item in trusted_proxies
        )
        self._warned_untrusted_forwarder = False

    def client_address(self, peer: str | None, forwarded_for: Iterable[str]) -> str:
        """The address failed attempts are counted against (see the module docstring)."""
        if peer is None:
            return "unknown"
        hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
        hops = [hop for hop in hops if hop]
        if not self._is_trusted(peer):
            if hops and not self._warned_untrusted_forwarder:
                self._warned_untrusted_forwarder = True
                # Behind a proxy that is not trusted, every caller is counted as the proxy:
                # one client's wrong keys would lock out everyone it forwards.
                log.warning(
                    "forwarded_for_from_untrusted_peer",
                    peer=peer,
                    hint="add the proxy's address to TRUSTED_PROXIES; every caller it forwards "
                    "is counted as that address until then (logged once per process)",
                )
            return _counted_as(peer)
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return _counted_as(hop)
        # Every hop is a trusted address (a caller on the proxies' own network): the leftmost is
        # the one the first proxy saw.
        return _counted_as(hops[0] if hops else peer)

    def look(self, address: str) -> Take:
        """The look at ``address``'s bucket that :meth:`check` makes, to combine with a take."""
        return Take(_bucket(address), self._limit, self._window_s, cost=0)

    async def check(self, address: str) -> None:
        """Raise 429 when ``address`` has no failed attempt left in its window."""
        decision = await self._limiter.take(
            _bucket(address), limit=self._limit, window_s=self._window_s, cost=0
        )
        if not decision.allowed:
            raise self.refusal(decision)

    @staticmethod
    def refusal(decision: Decision) -> RateLimited:
        """The 429 for an address that has spent its failed attempts."""
        retry_s = max(1, math.ceil(decision.retry_after_ms / 1000))
        return RateLimited(
            "Too many failed authentication attempts from this address; try again later",
            extra={"retryAfterMs": decision.retry_after_ms},
            headers={"Retry-After": str(retry_s)},
        )

    async def failed(self, address: str) -> Decision:
        """Count one refused key from ``address``; refused when it had no attempt left."""
        return await self._limiter.take(
            _bucket(address), limit=self._limit, window_s=self._window_s
        )

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)


def _counted_as(address: str) -> str:
    """An address as its bucket names it: normalised, and an IPv6 host by its /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address.lower()[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _bucket(address: str) -> str:
    # The bucket's class (its last part) labels the rate-limit metrics.
    return f"client:{address}:auth_failures"
