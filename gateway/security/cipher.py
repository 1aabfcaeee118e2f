"""Credential data sealed at rest with AES-256-GCM (an authenticated cipher).

The key is derived from ``SECRET_KEY`` with HKDF, so the same secret that signs agent API keys
never doubles as a cipher key. A sealed value is ``version byte 2 | 4-byte key id | 12-byte
nonce | ciphertext and tag``: the newest key of the ring seals, and a value sealed under a
previous key (``SECRET_KEYS_PREVIOUS``) opens until that key is retired (``agent-gateway admin
reseal`` seals it again under the newest). Version 1 (no key id, sealed before key ids existed)
is tried against every key of the ring. The associated data binds it to its credential's id
and organisation, so a sealed value moved to another row (or another organisation) fails to
open instead of leaking.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.security.keyring import KeyRing

_LEGACY = b"\x01"
_VERSION = b"\x02"
_KID_LEN = 4
_NONCE_LEN = 12


class CredentialUnreadable(Exception):
    """A sealed credential did not open: wrong key, altered bytes, or moved to another row."""


class CredentialCipher:
    """Seals and opens credential data for one ``SECRET_KEY``."""

    def __init__(self, keys: KeyRing | str) -> None:
        if not keys:
            raise ValueError("SECRET_KEY is required to seal credentials")
        ring = KeyRing.of(keys)
        self._aeads = {bytes.fromhex(kid): AESGCM(_derive(secret)) for kid, secret in ring}
        self._primary = bytes.fromhex(ring.primary_id)

    def seal(self, credential_id: uuid.UUID, org_id: uuid.UUID, data: Any) -> bytes:
        """The sealed form of ``data`` (any JSON value) for this credential row."""
        return self.seal_bytes(
            json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode(),
            _associated(credential_id, org_id),
        )

    def open(self, credential_id: uuid.UUID, org_id: uuid.UUID, sealed: bytes) -> Any:
        """The data sealed for this row; :class:`CredentialUnreadable` if it does not open."""
        return json.loads(self.open_bytes(sealed, _associated(credential_id, org_id)))

    def seal_bytes(self, plain: bytes, associated: bytes) -> bytes:
        """``plain`` sealed under the newest key, bound to ``associated``."""
        nonce = os.urandom(_NONCE_LEN)
        body = self._aeads[self._primary].encrypt(nonce, plain, associated)
        return _VERSION + self._primary + nonce + body

    def open_bytes(self, sealed: bytes, associated: bytes) -> bytes:
        """What :meth:`seal_bytes` sealed; :class:`CredentialUnreadable` if it does not open
        (altered, bound to something else, or sealed under a key the ring no longer holds)."""
        if sealed[:1] == _VERSION and len(sealed) >= 1 + _KID_LEN + _NONCE_LEN + 16:
            aead = self._aeads.get(sealed[1 : 1 + _KID_LEN])
            if aead is None:
                raise CredentialUnreadable("sealed under a key that is not in the ring")
            candidates = [aead]
            rest = sealed[1 + _KID_LEN :]
        elif sealed[:1] == _LEGACY and len(sealed) >= 1 + _NONCE_LEN + 16:
            candidates = list(self._aeads.values())
            rest = sealed[1:]
        else:
            raise CredentialUnreadable("unknown sealed format")
        nonce, body = rest[:_NONCE_LEN], rest[_NONCE_LEN:]
        for aead in candidates:
            try:
                return aead.decrypt(nonce, body, associated)
            except InvalidTag:
                continue
        raise CredentialUnreadable("authentication failed")

    def is_current(self, sealed: bytes) -> bool:
        """Whether ``sealed`` was sealed under the newest key (nothing for reseal to do)."""
        return sealed[:1] == _VERSION and sealed[1 : 1 + _KID_LEN] == self._primary


def _derive(secret: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"agent-gateway credentials v1",
    ).derive(secret.encode())


def _associated(credential_id: uuid.UUID, org_id: uuid.UUID) -> bytes:
    return b"credential|" + credential_id.bytes + org_id.bytes
