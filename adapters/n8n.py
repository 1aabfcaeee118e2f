"""n8n: runs are webhook calls answered by a "Respond to Webhook" node."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, ClassVar

import aiohttp

from adapters.base import RuntimeTimeout, RuntimeUnavailable, TriggerPayload


class N8nAdapter:
    """POSTs the trigger payload to the agent's webhook URL with its configured headers."""

    kind: ClassVar[str] = "n8n"

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def open_download(
        self,
        runtime: Mapping[str, Any],
        payload: TriggerPayload,
        *,
        wait_s: float,
        accept_encoding: str | None,
    ) -> aiohttp.ClientResponse:
        """Invoke the webhook and hand back its response as soon as the headers are in."""
        headers = {str(k): str(v) for k, v in (runtime.get("headers") or {}).items()}
        # The caller's own Accept-Encoding travels on, so that an encoded body and its
        # Content-Encoding/Content-Length reach the caller together and untouched.
        if accept_encoding:
            headers["Accept-Encoding"] = accept_encoding
        try:
            async with asyncio.timeout(wait_s):
                return await self._session.post(
                    runtime["webhook_url"], json=payload.to_json(), headers=headers
                )
        except TimeoutError:
            raise RuntimeTimeout("Runtime did not respond within the wait window") from None
        except (aiohttp.ClientConnectionError, aiohttp.InvalidURL, OSError) as exc:
            raise RuntimeUnavailable(f"Runtime invocation failed: {exc}") from exc
