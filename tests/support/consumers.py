"""Store consumers in tests: the ``make_consumer`` fixture's type, and the buffer they drain."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway.settings import Settings
from store.consumer import StoreConsumer
from store.event_buffer import EventBuffer
from store.redis_client import RedisClient

ConsumerFactory = Callable[..., Awaitable[StoreConsumer]]


def event_buffer(settings: Settings, redis: RedisClient) -> EventBuffer:
    """The run-event buffer a gateway with ``settings`` writes to while PostgreSQL is away."""
    return EventBuffer(redis, settings.events_stream, settings.events_partitions)
