"""What the SDK raises when the gateway says no."""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """The gateway answered with an error status.

    ``status`` is the HTTP status, ``body`` the parsed JSON body (or the text when it was not
    JSON), ``message`` the gateway's ``error`` text; ``retry_after_s`` what a 429 asks to wait
    (see :class:`RateLimited`) or a 503's ``Retry-After`` when it had one, else None.
    """

    def __init__(self, status: int, body: Any, *, retry_after_s: float | None = None) -> None:
        self.status = status
        self.body = body
        self.retry_after_s = retry_after_s
        super().__init__(f"HTTP {status}: {self.message}")

    @property
    def message(self) -> str:
        """The gateway's explanation."""
        if isinstance(self.body, dict):
            error = self.body.get("error")
            if isinstance(error, str):
                return error
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                return str(error["message"])
        return str(self.body)[:500]

    @property
    def run_id(self) -> int | None:
        """The run the error is about, when the gateway named one."""
        value = self.body.get("runId") if isinstance(self.body, dict) else None
        return value if isinstance(value, int) else None


class RateLimited(GatewayError):
    """429: the agent's bucket is empty; ``retry_after_s`` says when to try again."""

    def __init__(self, status: int, body: Any, *, retry_after_s: float | None = None) -> None:
        delay = 1.0 if retry_after_s is None else retry_after_s
        super().__init__(status, body, retry_after_s=delay)
        self.retry_after_s: float
