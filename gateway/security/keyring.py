"""The key ring: the newest secret signs and seals, older ones still verify and open.

``SECRET_KEY`` is the newest key; ``SECRET_KEYS_PREVIOUS`` (comma-separated) lists the keys it
replaced, still honoured until an operator retires them (docs/operations.md, "Rotating
SECRET_KEY"). Every key has an id, derived from the key itself (8 hex digits of a SHA-256),
so no replica needs to be told it: every signature, token and sealed value carries the id of
the key that made it, and a verifier picks that key (or refuses a retired one) instead of
trying them all. Values made before key ids existed carry none: those are tried against every
key of the ring. How strong ``SECRET_KEY`` must be is checked where it is read
(``gateway.settings``); previous keys are not checked, since rotating away from a weak key is
exactly what they are for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

from gateway.settings import Settings

KEY_ID_LEN = 8


def key_id(secret: str) -> str:
    """The id of ``secret``: 8 hex digits, the same on every replica."""
    return hashlib.sha256(b"agent-gateway key id|" + secret.encode()).hexdigest()[:KEY_ID_LEN]


class KeyRing:
    """The newest key and the previous ones, by id."""

    def __init__(self, primary: str, previous: Sequence[str] = ()) -> None:
        if not primary:
            raise ValueError("a secret key is required")
        self._keys: dict[str, str] = {key_id(primary): primary}
        for secret in previous:
            if secret:
                self._keys.setdefault(key_id(secret), secret)
        self.primary_id = key_id(primary)
        self.primary = primary

    @classmethod
    def of(cls, keys: KeyRing | str) -> KeyRing:
        """``keys`` as a ring (a single secret is a ring of one)."""
        return keys if isinstance(keys, KeyRing) else cls(keys)

    @classmethod
    def parse(cls, primary: str, previous: str) -> KeyRing:
        """The ring of ``SECRET_KEY`` and ``SECRET_KEYS_PREVIOUS`` (comma-separated)."""
        return cls(primary, [p.strip() for p in previous.split(",") if p.strip()])

    def get(self, kid: str) -> str | None:
        """The key with id ``kid``, or ``None`` (retired, or never ours)."""
        return self._keys.get(kid)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """``(id, key)`` pairs, the newest first."""
        yield self.primary_id, self.primary
        for kid, secret in self._keys.items():
            if kid != self.primary_id:
                yield kid, secret

    @property
    def ids(self) -> list[str]:
        """The ids of the ring's keys, the newest first."""
        return [kid for kid, _ in self]


def key_ring(settings: Settings) -> KeyRing:
    """The ring of ``SECRET_KEY`` and ``SECRET_KEYS_PREVIOUS``."""
    return KeyRing.parse(settings.secret_key, settings.secret_keys_previous)
