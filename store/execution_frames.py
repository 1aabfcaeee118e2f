"""The frames of an execute, kept in Redis so that a caller can resume its stream on any replica.

One Redis stream per execution, ``{exec:<runId>}:frames``: each entry is one SSE frame, its
entry id ``0-<n>`` where ``n`` is the frame's number in the execution (1, 2, …: the SSE ``id:``),
its one field ``d`` the frame's data. Entries are added in batches by one Lua script (one round
trip per batch, whatever its size), trimmed to about ``max_frames`` and expired ``retention_s``
after the last batch. A follower's lease, ``{exec:<runId>}:followed``, says someone is reading
the frames through the resume route. Every command touches one key (Redis Cluster: the hash tag
keeps an execution's keys on one slot anyway).

Store code: Redis only, nothing of the gateway or aiohttp.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from store.redis_client import RedisClient

# KEYS[1] the stream; ARGV[1] retention (s), ARGV[2] max frames, ARGV[3] the first frame's
# number, ARGV[4] the frames' data, each after its length (4 bytes, big-endian), numbered on
# from the first. One argument for the whole batch: packing two per frame was a tenth of the
# gateway's CPU in a burst of small frames.
_APPEND = """
local frames, at, number = ARGV[4], 1, tonumber(ARGV[3])
while at <= #frames do
  local size = struct.unpack('>I4', frames, at)
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '0-' .. number, 'd',
             string.sub(frames, at + 4, at + 3 + size))
  at = at + 4 + size
  number = number + 1
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return number
"""
_LENGTH = struct.Struct(">I")

TERMINATOR = b"[DONE]"


def frames_key(run_id: int) -> str:
    """The stream of an execution's frames."""
    return f"{{exec:{run_id}}}:frames"


def followed_key(run_id: int) -> str:
    """The lease a follower of an execution's frames renews while it reads them."""
    return f"{{exec:{run_id}}}:followed"


def _number(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[2])


class FrameLog:
    """Appends and reads the frames of executions."""

    def __init__(self, redis: RedisClient, *, retention_s: int, max_frames: int) -> None:
        self._redis = redis
        self._retention_s = retention_s
        self._max_frames = max_frames
        self._append = redis.register_script(_APPEND)

    async def append(self, run_id: int, frames: Sequence[tuple[int, bytes]]) -> None:
        """Add ``frames`` (number, data), numbered one after another, and push the expiry
        back."""
        if not frames:
            return
        first = frames[0][0]
        if frames[-1][0] != first + len(frames) - 1:
            raise ValueError("frames are appended numbered one after another")
        packed = bytearray()
        for _number, data in frames:
            packed += _LENGTH.pack(len(data))
            packed += data
        args: list[int | bytes] = [self._retention_s, self._max_frames, first, bytes(packed)]
        await self._append(keys=[frames_key(run_id)], args=args)

    async def read(
        self, run_id: int, after: int, *, count: int, block_ms: int | None
    ) -> list[tuple[int, bytes]]:
        """The frames numbered above ``after`` (at most ``count``), waiting up to ``block_ms``
        for one when there is none yet (``None``: no wait)."""
        answer: Any = await self._redis.xread(
            {frames_key(run_id): f"0-{after}"}, count=count, block=block_ms
        )
        if not answer:
            return []
        entries = answer[0][1]  # [[stream, entries]]
        return [(_number(entry_id), fields[b"d"]) for entry_id, fields in entries]

    async def bounds(self, run_id: int) -> tuple[int, int, bool] | None:
        """The first and last frame numbers kept and whether the last is the terminator;
        ``None`` when nothing is kept (never written, or expired)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xrange(frames_key(run_id), count=1)
            pipe.xrevrange(frames_key(run_id), count=1)
            first, last = await pipe.execute()
        if not first or not last:
            return None
        return _number(first[0][0]), _number(last[0][0]), last[0][1][b"d"] == TERMINATOR

    async def follow(self, run_id: int, lease_ms: int) -> None:
        """Say that someone reads the execution's frames, for ``lease_ms``."""
        await self._redis.set(followed_key(run_id), b"1", px=lease_ms)

    async def followed(self, run_id: int) -> bool:
        """Whether someone said it reads the execution's frames (within its lease)."""
        return bool(await self._redis.exists(followed_key(run_id)))
