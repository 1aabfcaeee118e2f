"""Which routes the key guard watches: every route that takes a key counts a refused one, and
refuses an address that has spent its attempts (429 with Retry-After) whatever key it sends.

The routes come from the OpenAPI document, so a route added there is walked too.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support.routes import concrete, protected_operations
from tests.support.tenants import new_tenant
from tests.support.tokens import ADMIN_TOKEN

Client = TestClient[web.Request, web.Application]
GatewayFactory = Callable[..., Awaitable[Client]]

# The test's requests arrive from 127.0.0.1, trusted as a proxy: each test counts its failures
# against an address of its own (a documentation /64), never another test's.
_TRUSTED = ("127.0.0.1",)


def _address() -> str:
    return f"2001:db8:{secrets.randbelow(0xFFFF):x}:{secrets.randbelow(0xFFFF):x}::1"


def _headers(address: str, path: str, key: str) -> dict[str, str]:
    headers = {"X-Forwarded-For": address, "Content-Type": "application/json"}
    if path.startswith("/admin"):
        headers["Authorization"] = f"Bearer {key}"
    elif path.startswith("/v0"):
        headers["Authorization"] = key
    else:
        headers["Authorization"] = f"Bearer {key}"
        headers["X-API-Key"] = key
    return headers


async def _status(gateway: Client, method: str, path: str, headers: dict[str, str]) -> Any:
    resp = await gateway.request(method, concrete(path), data=b"{}", headers=headers)
    return resp.status, resp.headers.get("Retry-After"), await resp.json()


async def test_a_refused_key_counts_on_every_route_that_takes_a_key(
    make_gateway: GatewayFactory,
) -> None:
    operations = protected_operations()
    gateway = await make_gateway(
        auth_failure_limit=len(operations),
        auth_failure_window_s=3600,
        trusted_proxies=_TRUSTED,
    )
    address = _address()

    statuses = []
    for method, path in operations:
        status, _, _ = await _status(gateway, method, path, _headers(address, path, "igk_wrong"))
        statuses.append((method, path, status))
    status, retry_after, _ = await _status(
        gateway, "GET", "/api/agents/1/runs/1", _headers(address, "/api", "igk_wrong")
    )

    assert [s for *_, s in statuses] == [401] * len(operations), statuses
    # One refusal per route spent the address's attempts: every route counted its own.
    assert status == 429
    assert retry_after is not None
    assert int(retry_after) >= 1


async def test_an_address_that_spent_its_attempts_is_refused_on_every_route_that_takes_a_key(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(
        auth_failure_limit=2, auth_failure_window_s=3600, trusted_proxies=_TRUSTED
    )
    tenant = await new_tenant(gateway)
    address = _address()
    for _ in range(2):
        status, _, _ = await _status(
            gateway, "GET", "/api/agents/1/runs/1", _headers(address, "/api", "igk_wrong")
        )
        assert status == 401

    for method, path in protected_operations():
        # The right key (or the admin token) makes no difference now.
        key = ADMIN_TOKEN if path.startswith("/admin") else tenant.ingest_key
        status, retry_after, body = await _status(
            gateway, method, path, _headers(address, path, key)
        )
        assert status == 429, (method, path, body)
        assert retry_after is not None, (method, path)
        assert int(retry_after) >= 1, (method, path)
        if path.startswith("/v0"):
            assert body["error"]["code"] == "rate_limited"
        else:
            assert body["retryAfterMs"] > 0, (method, path, body)

    # Another address behind the same proxy is served.
    resp = await gateway.get(
        "/api/agents/1/runs/1", headers=_headers(_address(), "/api", tenant.ingest_key)
    )
    assert resp.status == 404


async def test_routes_that_take_no_key_ignore_one(make_gateway: GatewayFactory) -> None:
    """Probes, documents and signed URLs authenticate nobody: a key sent to them is neither
    counted nor refused, from an address that has spent its attempts too."""
    gateway = await make_gateway(
        auth_failure_limit=1, auth_failure_window_s=3600, trusted_proxies=_TRUSTED
    )
    address = _address()
    wrong = _headers(address, "/api", "igk_wrong")
    for _ in range(3):
        assert (await gateway.get("/healthz", headers=wrong)).status == 200
    status, _, _ = await _status(gateway, "GET", "/api/agents/1/runs/1", wrong)
    assert status == 401
    status, _, _ = await _status(gateway, "GET", "/api/agents/1/runs/1", wrong)
    assert status == 429

    assert (await gateway.get("/healthz", headers=wrong)).status == 200
    assert (await gateway.get("/openapi.json", headers=wrong)).status == 200
