"""Group commit: the writes many requests ask for at about the same moment go out together.

A caller submits one item and awaits its own result. Items submitted while no batch is being
written go out on the next turn of the event loop, all together; items submitted while a batch
is on its way wait for it and go out in the next one. A lone caller waits for nobody (one loop
turn), and under load one round trip carries every write that piled up meanwhile: the cost per
write falls as the load rises, instead of the queue growing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


class GroupCommit(Generic[_Item, _Result]):
    """Hands the items submitted together to ``write``, one batch at a time.

    ``write`` gets a batch and returns one result per item, in order; if it raises, every
    caller of that batch gets the exception.
    """

    def __init__(
        self,
        write: Callable[[Sequence[_Item]], Awaitable[Sequence[_Result]]],
        *,
        max_batch: int = 500,
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._pending: list[tuple[_Item, asyncio.Future[_Result]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: _Item) -> _Result:
        """Write ``item`` with whatever else is submitted meanwhile; its result."""
        future: asyncio.Future[_Result] = asyncio.get_running_loop().create_future()
        # Its failure is seen even when its caller has left.
        future.add_done_callback(_retrieve)
        self._pending.append((item, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_all(), name="group-commit")
        # Shielded: a caller that leaves does not cancel the batch the others are in.
        return await asyncio.shield(future)

    async def _write_all(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    results = await self._write([item for item, _future in batch])
                except Exception as exc:  # handed to every caller of the batch
                    for _item, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                except BaseException:
                    for _item, future in batch:
                        if not future.done():
                            future.cancel()
                    raise
                for (_item, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._writer = None
            # Cancelled mid-way (the process is stopping): nobody is left hanging.
            for _item, future in self._pending:
                future.cancel()
            self._pending.clear()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
