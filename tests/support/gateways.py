"""The type of the ``make_gateway`` fixture: it starts gateway replicas on real sockets."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestClient

GatewayFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
