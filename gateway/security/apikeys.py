"""Ingest keys and agent API keys: generation, hashing, and derivation.

Keys are stored only as SHA-256 digests and looked up by digest, so the comparison never
touches the plaintext. Agent API keys are derived as HMAC(SECRET_KEY, salt) so that the
gateway can put the key into a trigger payload without storing it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from gateway.security.keyring import KeyRing

INGEST_PREFIX = "igk_"
AGENT_PREFIX = "agk_"
# Longest key we bother hashing; anything longer is not one of ours.
MAX_KEY_LENGTH = 256


def hash_key(key: str) -> bytes:
    """The digest a key is stored and looked up by."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def new_ingest_key() -> tuple[str, bytes]:
    """A fresh ingest key and its digest."""
    key = INGEST_PREFIX + secrets.token_urlsafe(32)
    return key, hash_key(key)


def new_agent_key_salt() -> bytes:
    """A fresh salt from which an agent API key is derived."""
    return secrets.token_bytes(16)


def derive_agent_api_key(secret_key: str, salt: bytes) -> str:
    """The agent API key for ``salt`` under ``secret_key``."""
    mac = hmac.new(secret_key.encode(), b"agent-api-key|" + salt, hashlib.sha256).digest()
    return AGENT_PREFIX + base64.urlsafe_b64encode(mac).decode().rstrip("=")


def agent_api_key(ring: KeyRing, salt: bytes, api_key_hash: bytes) -> str | None:
    """The agent's API key: derived under whichever key of the ring made it (the stored digest
    says which); ``None`` when that key has been retired (the agent's key must be rotated)."""
    for _kid, secret in ring:
        key = derive_agent_api_key(secret, salt)
        if hmac.compare_digest(hash_key(key), api_key_hash):
            return key
    return None


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else ``None``."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_KEY_LENGTH:
        return None
    return token
