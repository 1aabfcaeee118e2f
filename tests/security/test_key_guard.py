"""Which address a failed key is counted against, behind the proxies a deployment ships."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from gateway.security.key_guard import KeyGuard
from gateway.security.ratelimit import RateLimiter

# What deploy/k8s/configmap.yaml trusts: loopback (a sidecar proxy) and the private ranges.
SHIPPED = ("127.0.0.0/8", "::1", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")


GuardFactory = Callable[..., KeyGuard]


@pytest.fixture
def guard(redis_client: aioredis.Redis) -> GuardFactory:
    def make(trusted: tuple[str, ...] = SHIPPED) -> KeyGuard:
        limiter = RateLimiter(redis_client, fail_open=True)
        return KeyGuard(limiter, limit=20, window_s=60, trusted_proxies=trusted)

    return make


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "counted"),
    [
        # An outside caller through the ingress: the hop the ingress added.
        ("10.2.0.7", ["203.0.113.5"], "203.0.113.5"),
        # What the caller wrote itself sits left of it and is not believed.
        ("10.2.0.7", ["198.51.100.1, 203.0.113.5"], "203.0.113.5"),
        # Two trusted proxies in a row: the rightmost untrusted hop.
        ("10.2.0.7", ["203.0.113.5, 10.3.0.9"], "203.0.113.5"),
        # Callers on the proxies' own network (the as-deployed stage's loopback callers, a
        # service in the cluster) are told apart by the hop the first proxy saw.
        ("127.0.0.1", ["127.0.0.2"], "127.0.0.2"),
        ("127.0.0.1", ["127.0.0.1"], "127.0.0.1"),
        # No header: the peer.
        ("10.2.0.7", [], "10.2.0.7"),
        # A peer that is no proxy of ours cannot choose its bucket.
        ("203.0.113.9", ["192.0.2.1"], "203.0.113.9"),
        # IPv6 callers are counted per /64.
        ("::1", ["2001:db8:1:2::5"], "2001:db8:1:2::/64"),
    ],
)
def test_failed_keys_count_against_the_caller_the_trusted_proxies_saw(
    guard: GuardFactory, peer: str, forwarded_for: list[str], counted: str
) -> None:
    assert guard().client_address(peer, forwarded_for) == counted


def test_forwarded_headers_from_an_untrusted_peer_are_reported_once(guard: GuardFactory) -> None:
    """A deployment that forgot TRUSTED_PROXIES hears of it on the first forwarded request."""
    untrusting = guard(trusted=())
    with capture_logs() as logs:
        for _ in range(3):
            assert untrusting.client_address("10.2.0.7", ["203.0.113.5"]) == "10.2.0.7"
        untrusting.client_address("10.2.0.8", [])

    warnings = [line for line in logs if line["event"] == "forwarded_for_from_untrusted_peer"]
    assert len(warnings) == 1
    assert warnings[0]["peer"] == "10.2.0.7"
    assert "TRUSTED_PROXIES" in warnings[0]["hint"]
    assert warnings[0]["log_level"] == "warning"


def test_a_direct_caller_without_forwarded_headers_raises_no_warning(
    guard: GuardFactory,
) -> None:
    with capture_logs() as logs:
        guard(trusted=()).client_address("10.2.0.7", [])
    assert logs == []
