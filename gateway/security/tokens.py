"""Credentials tokens: proof that a caller acts for one run, until a moment.

A token is ``crt_<runId>_<expiresAtUnix>_<nonce>_<mac>``, the MAC an HMAC-SHA256 over the run
id, expiry and a random nonce (so every token issued is new) under a key derived from
``SECRET_KEY``. It needs no table: every replica verifies it
alone, and issuing a fresh one (registering a run again) costs nothing. The run behind it is
still looked up on every use, so a token stops working when its run ends.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

_PREFIX = "crt_"
_SHAPE = re.compile(r"crt_([1-9][0-9]{0,18})_([0-9]{1,12})_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")


class TokenInvalid(Exception):
    """Not a token this gateway issued (malformed or altered)."""


class TokenExpired(Exception):
    """A token this gateway issued, past its expiry."""

    def __init__(self, run_id: int) -> None:
        super().__init__(run_id)
        self.run_id = run_id


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token and how long it stays valid."""

    token: str
    expires_in_s: int


class CredentialsTokens:
    """Issues and verifies credentials tokens under one ``SECRET_KEY``."""

    def __init__(self, secret_key: str, *, ttl_s: int) -> None:
        self._key = hmac.new(secret_key.encode(), b"credentials-token", hashlib.sha256).digest()
        self._ttl_s = ttl_s

    def issue(self, run_id: int, *, at_least_s: float = 0, now: float | None = None) -> IssuedToken:
        """A token for ``run_id`` valid for the configured time, or ``at_least_s`` if longer,
        from ``now`` (default: this moment)."""
        lifetime = max(self._ttl_s, int(at_least_s) + 1)
        expires = int(time.time() if now is None else now) + lifetime
        nonce = secrets.token_hex(8)
        mac = self._mac(run_id, expires, nonce)
        return IssuedToken(f"{_PREFIX}{run_id}_{expires}_{nonce}_{mac}", lifetime)

    def verify(self, token: str | None) -> int:
        """The run id ``token`` was issued for.

        Raises :class:`TokenInvalid` (not ours, or altered) or :class:`TokenExpired`.
        """
        match = _SHAPE.fullmatch(token or "")
        if match is None:
            raise TokenInvalid
        run_id, expires = int(match[1]), int(match[2])
        if not hmac.compare_digest(match[4], self._mac(run_id, expires, match[3])):
            raise TokenInvalid
        if expires <= time.time():
            raise TokenExpired(run_id)
        return run_id

    def _mac(self, run_id: int, expires: int, nonce: str) -> str:
        message = f"{run_id}|{expires}|{nonce}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")
