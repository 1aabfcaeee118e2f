"""The session's PostgreSQL and Redis (the ``backends`` fixture starts or takes them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backends:
    """Where the session's PostgreSQL and Redis listen."""

    database_url: str
    redis_url: str
