"""Credential data sealed at rest with AES-256-GCM (an authenticated cipher).

The key is derived from ``SECRET_KEY`` with HKDF, so the same secret that signs agent API keys
never doubles as a cipher key. A sealed value is ``version byte | 12-byte nonce | ciphertext
and tag``; the associated data binds it to its credential's id and organisation, so a sealed
value moved to another row (or another organisation) fails to open instead of leaking.
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

_VERSION = b"\x01"
_NONCE_LEN = 12


class CredentialUnreadable(Exception):
    """A sealed credential did not open: wrong key, altered bytes, or moved to another row."""


class CredentialCipher:
    """Seals and opens credential data for one ``SECRET_KEY``."""

    def __init__(self, secret_key: str) -> None:
        if not secret_key:
            raise ValueError("SECRET_KEY is required to seal credentials")
        key = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=b"agent-gateway credentials v1",
        ).derive(secret_key.encode())
        self._aead = AESGCM(key)

    def seal(self, credential_id: uuid.UUID, org_id: uuid.UUID, data: Any) -> bytes:
        """The sealed form of ``data`` (any JSON value) for this credential row."""
        nonce = os.urandom(_NONCE_LEN)
        plain = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        sealed = self._aead.encrypt(nonce, plain, _associated(credential_id, org_id))
        return _VERSION + nonce + sealed

    def open(self, credential_id: uuid.UUID, org_id: uuid.UUID, sealed: bytes) -> Any:
        """The data sealed for this row; :class:`CredentialUnreadable` if it does not open."""
        if sealed[:1] != _VERSION or len(sealed) < 1 + _NONCE_LEN + 16:
            raise CredentialUnreadable("unknown sealed format")
        nonce, body = sealed[1 : 1 + _NONCE_LEN], sealed[1 + _NONCE_LEN :]
        try:
            plain = self._aead.decrypt(nonce, body, _associated(credential_id, org_id))
        except InvalidTag:
            raise CredentialUnreadable("authentication failed") from None
        return json.loads(plain)


def _associated(credential_id: uuid.UUID, org_id: uuid.UUID) -> bytes:
    return b"credential|" + credential_id.bytes + org_id.bytes
