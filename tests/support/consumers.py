"""The type of the ``make_consumer`` fixture: it starts store consumers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from store.consumer import StoreConsumer

ConsumerFactory = Callable[..., Awaitable[StoreConsumer]]
