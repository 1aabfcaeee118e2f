"""Who is calling: the first step of every authenticated handler, one helper per credential.

- :func:`authenticate_ingest_key`: an organisation's ingest key, read from the header its API
  names (:class:`KeyHeader`): the agent API, workflow execute, ``/v0``;
- :func:`authenticate_admin`: the operator's ``ADMIN_TOKEN`` (the admin API);
- :func:`authenticate_agent_key`: an agent's API key, which a run's own code calls with (run
  callbacks, credential resolve);
- :func:`authenticate_credentials_token`: the ``X-Credentials-Token`` a run's trigger payload
  carried (credential resolve).

Each helper first takes the key guard's step (:class:`KeyGuardStep`): an address that has spent
its failed attempts is refused 429 before its key is looked at, and a key the helper refuses
(401) counts against its address. The keys themselves are checked in
``gateway.security.key_checks``. What an authenticated caller may do (an agent that is not
active, say) is its domain service's answer, not the helper's.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from enum import Enum
from types import TracebackType
from typing import Protocol, TypeVar

from aiohttp import web

from gateway.errors import Unauthorized
from gateway.http.app_keys import CREDENTIALS_TOKENS, KEY_GUARD, LOOKUP_CACHE, SETTINGS
from gateway.security.key_checks import (
    agent_for_api_key,
    check_admin_token,
    org_for_api_key,
    org_for_ingest_key,
    org_for_v0_key,
)
from gateway.security.ratelimit import Decision, RateLimiter, Take
from gateway.security.tokens import TokenExpired, TokenInvalid
from store.models import Agent

_T = TypeVar("_T")
_TOKEN_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="agent-gateway"'}


class KeyGuardStep:
    """The key guard (``gateway.security.key_guard``) in one request.

    A request that presents a key (``Authorization`` or ``X-API-Key``) from an address with no
    failed attempt left is refused 429 before its key is looked at; a key refused (401) counts
    against its address. A request that presents none passes untouched.

    On a route whose token take also looks at the guard (one Redis call instead of two), the
    handler makes the step itself, ``async with KeyGuardStep(request, with_token=True) as
    guard``, and hands it to the authentication helper and to ``take_token``: the look then
    waits for the take (a key lookup and other reads come first, nothing is changed before
    it), and an answer given without a take (an error, a replay) makes the look on its way out,
    so an address over its limit is refused 429 whatever its key, as on every other route.
    """

    def __init__(self, request: web.Request, *, with_token: bool = False) -> None:
        presented = bool(request.headers.get("Authorization") or request.headers.get("X-API-Key"))
        # config_dict: under the /v0 sub-application the guard belongs to the main one.
        self._guard = request.config_dict[KEY_GUARD]
        self._address = (
            self._guard.client_address(
                request.remote, request.headers.getall("X-Forwarded-For", [])
            )
            if presented
            else None
        )
        self._pending = presented and with_token
        self._looked = False

    async def before_key(self) -> None:
        """Refuse (429) an address with no failed attempt left, unless the look waits for the
        token take; once per request, however many credentials it presents."""
        if self._address is not None and not self._pending and not self._looked:
            self._looked = True
            await self._guard.check(self._address)

    async def refused(self) -> None:
        """Count a refused key against the address (429 instead of the 401 when the look was
        still waiting and the address had no attempt left before this one)."""
        if self._address is None:
            return
        decision = await self._guard.failed(self._address)
        if self._pending:
            self._pending = False
            if not decision.allowed:
                raise self._guard.refusal(decision)

    async def take(self, limiter: RateLimiter, take: Take) -> Decision:
        """Take from ``take``'s bucket, after the waiting look when there is one (one Redis
        call): an address over its failed-key limit is refused before any token is taken."""
        if self._address is None or not self._pending:
            (decision,) = await limiter.take_in_order(take)
            return decision
        self._pending = False
        # take_in_order stops at the first refusal: a refused look takes nothing.
        decisions = await limiter.take_in_order(self._guard.look(self._address), take)
        if not decisions[0].allowed:
            raise self._guard.refusal(decisions[0])
        return decisions[1]

    async def __aenter__(self) -> KeyGuardStep:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # An answer (or an error) given without a take: the look is made before it goes out.
        if self._address is not None and self._pending:
            self._pending = False
            await self._guard.check(self._address)


async def _guarded(guard: KeyGuardStep, check: Callable[[], Awaitable[_T]]) -> _T:
    await guard.before_key()
    try:
        return await check()
    except Unauthorized:
        await guard.refused()
        raise


class KeyHeader(Enum):
    """Where an API reads an ingest key, and the shape of its 401."""

    # The agent API: ``Authorization: Bearer``.
    BEARER = "bearer"
    # Workflow execute (Sim's SDKs): ``X-API-Key``, or else ``Authorization: Bearer``.
    X_API_KEY = "x-api-key"
    # The /v0 API: ``Authorization``, bare or ``Bearer``; its 401 in the /v0 shape.
    V0 = "v0"


async def authenticate_ingest_key(
    request: web.Request,
    header: KeyHeader = KeyHeader.BEARER,
    *,
    guard: KeyGuardStep | None = None,
) -> uuid.UUID:
    """The organisation whose ingest key the request carries in ``header``; 401 otherwise."""
    # config_dict: /v0 is a sub-application, and the cache belongs to the main one.
    lookups = request.config_dict[LOOKUP_CACHE]
    authorization = request.headers.get("Authorization")

    async def check() -> uuid.UUID:
        if header is KeyHeader.X_API_KEY:
            return await org_for_api_key(lookups, request.headers.get("X-API-Key"), authorization)
        if header is KeyHeader.V0:
            return await org_for_v0_key(lookups, authorization)
        return await org_for_ingest_key(lookups, authorization)

    return await _guarded(guard or KeyGuardStep(request), check)


async def authenticate_admin(request: web.Request, *, guard: KeyGuardStep | None = None) -> None:
    """The admin API's caller: the operator's ``ADMIN_TOKEN`` in ``Authorization: Bearer``."""

    async def check() -> None:
        check_admin_token(request.app[SETTINGS].admin_token, request.headers.get("Authorization"))

    await _guarded(guard or KeyGuardStep(request), check)


class Refusals(Protocol):
    """Told why a credential was refused, for a route that keeps a record of its refusals."""

    def __call__(self, reason: str, **ids: object) -> None: ...


async def authenticate_agent_key(
    request: web.Request,
    *,
    guard: KeyGuardStep | None = None,
    on_refused: Refusals | None = None,
) -> Agent:
    """The agent whose API key is in ``Authorization: Bearer`` (a run's own code calls with
    it: it came in the run's trigger payload); 401 otherwise, before any body is read."""

    async def check() -> Agent:
        try:
            return await agent_for_api_key(
                request.app[LOOKUP_CACHE], request.headers.get("Authorization")
            )
        except Unauthorized:
            if on_refused is not None:
                on_refused("invalid_agent_key")
            raise

    return await _guarded(guard or KeyGuardStep(request), check)


async def authenticate_credentials_token(
    request: web.Request,
    agent: Agent,
    *,
    guard: KeyGuardStep | None = None,
    on_refused: Refusals | None = None,
) -> int:
    """The run whose ``X-Credentials-Token`` the request carries (issued by this gateway, not
    expired); 401 otherwise."""
    given = request.headers.get("X-Credentials-Token")

    async def check() -> int:
        try:
            return request.app[CREDENTIALS_TOKENS].verify(given)
        except TokenExpired as exc:
            if on_refused is not None:
                on_refused("token_expired", status=401, agent_id=agent.id, run_id=exc.run_id)
            raise Unauthorized("Credentials token has expired", headers=_TOKEN_CHALLENGE) from None
        except TokenInvalid:
            if on_refused is not None:
                reason = "token_missing" if not given else "token_invalid"
                on_refused(reason, status=401, agent_id=agent.id)
            raise Unauthorized(
                "Missing or invalid X-Credentials-Token", headers=_TOKEN_CHALLENGE
            ) from None

    return await _guarded(guard or KeyGuardStep(request), check)
