"""Every route authenticates before it validates: no 400 or 422 reaches a caller without a key.

The routes come from the OpenAPI document, so a route added there is walked too.
"""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support.routes import concrete, protected_operations


@pytest.mark.parametrize(("method", "path"), protected_operations())
async def test_a_caller_without_credentials_is_refused_before_its_body_is_read(
    gateway: TestClient[web.Request, web.Application], method: str, path: str
) -> None:
    for body in (b"{not json", b"[1, 2]", b'{"unexpected": true}'):
        resp = await gateway.request(
            method, concrete(path), data=body, headers={"Content-Type": "application/json"}
        )
        assert resp.status == 401, (method, path, body, await resp.text())
        assert resp.content_type == "application/json"
        assert "error" in await resp.json()


def test_every_protected_route_of_the_document_is_walked() -> None:
    # The 17 routes behind a key or token when this was written; a route added stays covered.
    assert len(protected_operations()) >= 17
