"""An agent's runtime secrets, sealed at rest like credentials and opened only in memory.

The secret fields of an agent's ``runtime`` (:data:`SECRET_FIELDS`: a Trigger.dev
``secret_key``, n8n's auth ``headers``) are never stored in the ``runtime`` column: each is
sealed apart with the credential cipher (AES-256-GCM under the key ring's newest key) and kept
in ``agents.runtime_secrets`` (migration 0009) as ``{"<field>": "<base64>"}``. The associated
data names the agent's id and the field, so a sealed value copied to another agent's row (or
to another field) does not open.

In memory, the store hands the gateway an agent's ``runtime`` with its sealed values under
``store.agents.SEALED``, together with the id of the row they came from; the adapters get them
opened through :meth:`RuntimeSecrets.opener` at the moment they call the runtime, so the cached
``Agent`` (shared by every request of the process) never holds a secret in plaintext. A value
that does not open makes that call fail with :class:`~adapters.base.RuntimeRefused`: a failed
run that says so, not a 500.

Rows written before this release hold their secrets in ``runtime`` itself: they are used as
they are until the agent's next write or ``agent-gateway admin reseal`` seals them.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from adapters.base import RuntimeRefused
from gateway.security.cipher import CredentialCipher, CredentialUnreadable
from store.agents import SEALED

log = structlog.get_logger(__name__)

SECRET_FIELDS = ("secret_key", "headers")


class RuntimeSecrets:
    """Seals an agent's runtime secrets for its row and opens them for its runtime calls."""

    def __init__(self, cipher: CredentialCipher) -> None:
        self._cipher = cipher

    def seal(
        self, agent_id: int, runtime: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """``(runtime without its secrets, {field: sealed value})`` to store for ``agent_id``.

        ``runtime`` is what an operator gave (plaintext secrets) or what the store holds (its
        sealed values are opened and sealed again under the newest key)."""
        plain = self.open(runtime)
        public = {k: v for k, v in plain.items() if k not in SECRET_FIELDS and k != SEALED}
        sealed = {
            name: base64.b64encode(
                self._cipher.seal_bytes(_encode(plain[name]), _associated(agent_id, name))
            ).decode()
            for name in SECRET_FIELDS
            if name in plain
        }
        return public, sealed

    def open(self, runtime: Mapping[str, Any]) -> dict[str, Any]:
        """The runtime with its secrets in plaintext; :class:`CredentialUnreadable` when a
        sealed one does not open (altered, moved from another agent, or its key retired)."""
        opened = {k: v for k, v in runtime.items() if k != SEALED}
        sealed = runtime.get(SEALED)
        if not isinstance(sealed, Mapping):
            return opened  # nothing sealed: a row from before sealing, or no secrets
        agent_id = int(sealed["agent_id"])
        for name in SECRET_FIELDS:
            # A plaintext field wins: only the previous release writes one (during a roll), so
            # it is newer than what is sealed.
            if name in sealed and name not in opened:
                opened[name] = json.loads(
                    self._cipher.open_bytes(_decode(sealed[name]), _associated(agent_id, name))
                )
        return opened

    def needs_reseal(
        self, stored_runtime: Mapping[str, Any], stored_sealed: Mapping[str, Any]
    ) -> bool:
        """Whether a stored row holds a secret in plaintext or one sealed under an older key."""
        if any(name in stored_runtime for name in SECRET_FIELDS):
            return True
        try:
            return not all(
                self._cipher.is_current(_decode(value)) for value in stored_sealed.values()
            )
        except CredentialUnreadable:
            return True

    def opener(self) -> Callable[[Mapping[str, Any]], Mapping[str, Any]]:
        """What the adapters open a runtime with: :meth:`open`, a value that does not open
        being a :class:`RuntimeRefused` (the run fails saying so)."""

        def open_runtime(runtime: Mapping[str, Any]) -> Mapping[str, Any]:
            try:
                return self.open(runtime)
            except CredentialUnreadable as exc:
                sealed = runtime.get(SEALED)
                agent_id = sealed.get("agent_id") if isinstance(sealed, Mapping) else None
                log.error("runtime_secrets_unreadable", agent_id=agent_id, problem=str(exc))
                raise RuntimeRefused(
                    "The agent's runtime secrets cannot be opened with this gateway's "
                    "SECRET_KEY (sealed for another agent, altered, or under a retired key): "
                    "set them again on the agent"
                ) from None

        return open_runtime


def _encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _decode(value: Any) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise CredentialUnreadable("not a sealed value") from None


def _associated(agent_id: int, name: str) -> bytes:
    return b"agent-runtime|" + agent_id.to_bytes(8, "big", signed=True) + b"|" + name.encode()
