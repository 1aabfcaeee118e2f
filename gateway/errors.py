"""Domain exceptions. Each names its HTTP status; one middleware turns them into responses."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A failure the caller is told about, with a JSON body ``{"error": message, **extra}``."""

    status = 500
    # The connection closes after the error: the request's body was not read to its end.
    close_connection = False

    def __init__(
        self,
        message: str,
        *,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}
        self.headers = headers or {}


class BadRequest(ApiError):
    """The request is malformed (400)."""

    status = 400


class Unauthorized(ApiError):
    """No credentials, or credentials that match nothing (401)."""

    status = 401


class Forbidden(ApiError):
    """Authenticated, but not allowed (403)."""

    status = 403


class NotFound(ApiError):
    """No such resource, or not one this caller may know exists (404)."""

    status = 404


class Conflict(ApiError):
    """The resource is in a state that refuses the request, e.g. a run that has ended (409)."""

    status = 409


class Gone(ApiError):
    """The resource existed but is no longer kept, e.g. an execution's expired frames (410)."""

    status = 410


class PayloadTooLarge(ApiError):
    """The request body is over its limit (413)."""

    status = 413
    close_connection = True


class RequestTimeout(ApiError):
    """The request body did not arrive within its time (408)."""

    status = 408
    close_connection = True


class Unprocessable(ApiError):
    """The agent cannot serve this kind of run (422)."""

    status = 422


class RateLimited(ApiError):
    """The agent's bucket is empty (429)."""

    status = 429


class RuntimeInvocationFailed(ApiError):
    """The runtime could not be invoked at all (500, as the contract says)."""

    status = 500


class BadGateway(ApiError):
    """The runtime answered, but not with what the run needed (502)."""

    status = 502


class ServiceUnavailable(ApiError):
    """A backing service is down; try again later (503)."""

    status = 503


class GatewayTimeout(ApiError):
    """The runtime sent nothing within the wait window (504)."""

    status = 504


def v0_error(cls: type[ApiError], message: str, code: str, details: Any = None) -> ApiError:
    """An error of the ``/v0`` API, answered as ``{"error": {"code", "message", "details"}}``
    (``gateway.http.middleware.v0_api_error``)."""
    return cls(message, extra={"code": code, "details": details})
