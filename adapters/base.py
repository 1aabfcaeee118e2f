"""The one Protocol every runtime adapter implements, and what it exchanges with the gateway."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import aiohttp


class RuntimeFailure(Exception):
    """Base of the failures an adapter reports."""


class RuntimeUnavailable(RuntimeFailure):
    """The runtime could not be invoked at all (refused, unresolvable, reset before headers)."""


class RuntimeTimeout(RuntimeFailure):
    """The runtime sent no response headers within the wait window."""


class RuntimeUnsupported(RuntimeFailure):
    """The runtime kind cannot serve this kind of run."""


@dataclass(frozen=True, slots=True)
class TriggerPayload:
    """What a runtime receives when a run starts (DESIGN.md, Runs)."""

    run_id: int
    agent_id: int
    input: Mapping[str, Any]
    agent_api_key: str
    callback_url: str
    credentials_token: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The payload as the JSON body the runtime sees."""
        return {
            "runId": self.run_id,
            "agentId": self.agent_id,
            "input": dict(self.input),
            "agentApiKey": self.agent_api_key,
            "credentialsToken": self.credentials_token,
            "callbackUrl": self.callback_url,
        }


class RuntimeAdapter(Protocol):
    """A workflow runtime the gateway can start runs on."""

    kind: ClassVar[str]

    async def open_download(
        self,
        runtime: Mapping[str, Any],
        payload: TriggerPayload,
        *,
        wait_s: float,
        accept_encoding: str | None,
    ) -> aiohttp.ClientResponse:
        """Start the run and return the runtime's response once its headers arrived.

        The body is left unread for the caller to stream; the caller must release or close
        the response. Raises :class:`RuntimeTimeout` when no headers arrive within ``wait_s``
        and :class:`RuntimeUnavailable` when the runtime cannot be reached.
        """
        ...
