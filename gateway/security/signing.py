"""Signed URLs: an HMAC over a path and an expiry, keyed from ``SECRET_KEY``.

A signed URL needs no other credential: whoever holds it may ``GET`` the path until it
expires. The signature covers the path (so it cannot be moved to another file) and the expiry
(so it cannot be extended); any change to either is refused. Every replica derives the same
key from ``SECRET_KEY``, so a URL signed by one replica is honoured by all.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import math
import time
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from gateway.security.keyring import KeyRing

EXPIRES_PARAM = "expires"
SIGNATURE_PARAM = "signature"
# Long enough for any real expiry, short enough that int() of it is cheap.
_MAX_EXPIRES_DIGITS = 12


class SignatureError(Exception):
    """A signed URL that is not (or no longer) valid; the message says why."""


class SignatureExpired(SignatureError):
    """The signature was valid, but its expiry has passed."""


@dataclass(frozen=True, slots=True)
class SignedUrl:
    """A signed URL and the moment it stops being honoured."""

    url: str
    expires_at: dt.datetime


class UrlSigner:
    """Signs and verifies ``(path, expiry)`` pairs.

    ``purpose`` separates keys: a signature made for one use of signed URLs is never valid for
    another that uses a different purpose, even under the same ``SECRET_KEY``.
    """

    def __init__(self, keys: KeyRing | str, *, purpose: str = "signed-url") -> None:
        if not keys:
            raise ValueError("a secret key is required to sign URLs")
        ring = KeyRing.of(keys)
        self._keys = {
            kid: hmac.new(
                secret.encode(), b"agent-gateway|" + purpose.encode(), hashlib.sha256
            ).digest()
            for kid, secret in ring
        }
        self._primary = ring.primary_id

    def signature(self, path: str, expires: int, *, kid: str | None = None) -> str:
        """``<key id>.<hex HMAC-SHA256>`` of ``path`` and ``expires`` (Unix seconds), under
        the newest key (or the key ``kid``)."""
        kid = kid or self._primary
        return f"{kid}.{self._mac(self._keys[kid], path, expires)}"

    @staticmethod
    def _mac(key: bytes, path: str, expires: int) -> str:
        message = f"{path}\n{expires}".encode()
        return hmac.new(key, message, hashlib.sha256).hexdigest()

    def _matches(self, path: str, expires: int, signature: str) -> bool:
        given = signature.encode("utf-8", "replace")
        kid, dot, _ = signature.partition(".")
        if dot:
            key = self._keys.get(kid)
            # A retired key's signature is as invalid as a forged one.
            return key is not None and hmac.compare_digest(
                f"{kid}.{self._mac(key, path, expires)}".encode(), given
            )
        return any(
            hmac.compare_digest(self._mac(key, path, expires).encode(), given)
            for key in self._keys.values()
        )

    def sign(self, base_url: str, path: str, *, ttl_s: int, now: float | None = None) -> SignedUrl:
        """A URL for ``path`` under ``base_url``, valid for ``ttl_s`` seconds from ``now``.

        ``path`` is the URL path as the server will see it (already percent-encoded).
        """
        current = time.time() if now is None else now
        # Rounded up: a URL never lives shorter than ttl_s, however late in a second it is made.
        expires = math.ceil(current) + max(1, ttl_s)
        query = urlencode({EXPIRES_PARAM: expires, SIGNATURE_PARAM: self.signature(path, expires)})
        return SignedUrl(
            url=f"{base_url.rstrip('/')}{path}?{query}",
            expires_at=dt.datetime.fromtimestamp(expires, dt.UTC),
        )

    def verify(
        self, path: str, expires: str | None, signature: str | None, *, now: float | None = None
    ) -> None:
        """Raise :class:`SignatureError` unless ``signature`` is valid for ``path`` and
        ``expires`` and the expiry has not passed."""
        if not expires or not signature:
            raise SignatureError("The URL is not signed")
        if not (expires.isascii() and expires.isdigit()) or len(expires) > _MAX_EXPIRES_DIGITS:
            raise SignatureError("The URL's expiry is malformed")
        # Compare before looking at the clock: an expired URL with a forged signature is
        # "invalid", never "expired".
        if not self._matches(path, int(expires), signature):
            raise SignatureError("The URL's signature does not match")
        current = time.time() if now is None else now
        if int(expires) <= current:
            raise SignatureExpired("The URL has expired")


def url_path(*segments: str) -> str:
    """A URL path from raw segments, each percent-encoded (``/`` inside a segment too)."""
    return "/" + "/".join(quote(segment, safe="") for segment in segments)
