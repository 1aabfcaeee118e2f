"""Real local servers for redirect tests: one that answers every request with a redirect to
another, which records whatever reaches it (it must stay empty: runtime calls never follow)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class RedirectPair:
    """``origin`` redirects every request to the same path on ``target``; ``reached`` is what
    ``target`` received (method, path, headers, body)."""

    origin: TestServer
    target: TestServer
    reached: list[dict[str, Any]] = field(default_factory=list)

    def url(self, path: str) -> str:
        """``path`` on the redirecting server."""
        return str(self.origin.make_url(path))

    @property
    def target_origin(self) -> str:
        """The target's ``scheme://host:port``, as a redirect error names it."""
        return str(self.target.make_url("/").origin())


RedirectFactory = Callable[[int], Awaitable[RedirectPair]]


async def redirect_pairs() -> AsyncIterator[RedirectFactory]:
    """A factory of :class:`RedirectPair` answering with a given redirect status; every server
    it started is closed when the generator ends."""
    async with AsyncExitStack() as stack:

        async def make(status: int) -> RedirectPair:
            reached: list[dict[str, Any]] = []

            async def record(request: web.Request) -> web.Response:
                reached.append(
                    {
                        "method": request.method,
                        "path": request.path,
                        "headers": dict(request.headers),
                        "body": await request.read(),
                    }
                )
                return web.json_response({"stolen": True})

            target_app = web.Application()
            target_app.router.add_route("*", "/{tail:.*}", record)
            target = TestServer(target_app, host="127.0.0.1")
            await stack.enter_async_context(target)

            async def redirect(request: web.Request) -> web.Response:
                location = str(target.make_url(request.path_qs))
                return web.Response(status=status, headers={"Location": location})

            origin_app = web.Application()
            origin_app.router.add_route("*", "/{tail:.*}", redirect)
            origin = TestServer(origin_app, host="127.0.0.1")
            await stack.enter_async_context(origin)
            return RedirectPair(origin, target, reached)

        yield make
