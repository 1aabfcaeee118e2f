"""Credentials tokens: proof that a caller acts for one run, until a moment.

A token is ``crt_<runId>_<expiresAtUnix>_<nonce>_<keyId>_<mac>``, the MAC an HMAC-SHA256 over
the run id, expiry and a random nonce (so every token issued is new) under a key derived from
the newest key of the ring (``SECRET_KEY``), whose id it names; a token issued under a previous
key (``SECRET_KEYS_PREVIOUS``) verifies until that key is retired. A token without a key id
(issued before key ids existed) is tried against every key. It needs no table: every replica
verifies it alone, and issuing a fresh one (registering a run again) costs nothing. The run
behind it is still looked up on every use, so a token stops working when its run ends.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from gateway.security.keyring import KeyRing

_PREFIX = "crt_"
_SHAPE = re.compile(
    r"crt_([1-9][0-9]{0,18})_([0-9]{1,12})_([0-9a-f]{16})_(?:([0-9a-f]{8})_)?([A-Za-z0-9_-]{43})"
)


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

    def __init__(self, keys: KeyRing | str, *, ttl_s: int) -> None:
        ring = KeyRing.of(keys)
        self._keys = {
            kid: hmac.new(secret.encode(), b"credentials-token", hashlib.sha256).digest()
            for kid, secret in ring
        }
        self._primary = ring.primary_id
        self._ttl_s = ttl_s

    def issue(self, run_id: int, *, at_least_s: float = 0, now: float | None = None) -> IssuedToken:
        """A token for ``run_id`` valid for the configured time, or ``at_least_s`` if longer,
        from ``now`` (default: this moment)."""
        lifetime = max(self._ttl_s, int(at_least_s) + 1)
        expires = int(time.time() if now is None else now) + lifetime
        nonce = secrets.token_hex(8)
        kid = self._primary
        mac = self._mac(self._keys[kid], run_id, expires, nonce)
        return IssuedToken(f"{_PREFIX}{run_id}_{expires}_{nonce}_{kid}_{mac}", lifetime)

    def verify(self, token: str | None) -> int:
        """The run id ``token`` was issued for.

        Raises :class:`TokenInvalid` (not ours, or altered) or :class:`TokenExpired`.
        """
        match = _SHAPE.fullmatch(token or "")
        if match is None:
            raise TokenInvalid
        run_id, expires, nonce, kid, mac = (
            int(match[1]),
            int(match[2]),
            match[3],
            match[4],
            match[5],
        )
        if kid is not None:
            key = self._keys.get(kid)  # None: a retired key (or not ours)
            keys = [] if key is None else [key]
        else:
            keys = list(self._keys.values())
        if not any(hmac.compare_digest(mac, self._mac(k, run_id, expires, nonce)) for k in keys):
            raise TokenInvalid
        if expires <= time.time():
            raise TokenExpired(run_id)
        return run_id

    @staticmethod
    def _mac(key: bytes, run_id: int, expires: int, nonce: str) -> str:
        message = f"{run_id}|{expires}|{nonce}".encode()
        digest = hmac.new(key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")
