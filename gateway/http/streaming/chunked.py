"""Forwarding a chunked body socket to socket: chunk headers parsed here, chunk payloads spliced.

A runtime that sends ``Transfer-Encoding: chunked`` frames its body as ``<hex size>\\r\\n``,
that many bytes, ``\\r\\n``, …, ``0\\r\\n``, trailers, ``\\r\\n``. Copied through aiohttp, every
byte is parsed, buffered and written again by Python. Here only the framing is read (a few
bytes per chunk); each chunk's payload moves socket to socket through a pipe
(:mod:`gateway.http.streaming.splice`) under a chunk header of our own, and aiohttp's response
writer ends the body with its ``0\\r\\n\\r\\n``, exactly as on the copy path (the runtime's
trailers are dropped there too).

Taking over mid-body needs to know where in the framing aiohttp's parser stopped, which its
C parser does not tell. So the runtime connections' protocol (:class:`RecordingConnector`)
keeps a reference to the raw bytes of each response's start (up to :data:`RAW_LIMIT`); at
take-over those are parsed again here, and the take-over happens only when that parse
delivers exactly the payload bytes aiohttp delivered. Otherwise the copy path carries on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from enum import Enum
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler

from gateway.http.streaming.splice import Channel, Copy, UpstreamClosed, run_copy

# Raw bytes kept per response for a take-over: what aiohttp may have read before the first
# chunk is handed on (two read buffers and one socket read, with room to spare).
RAW_LIMIT = 1024 * 1024
# A chunk-size line (with extensions) or a trailer line longer than this is refused.
_MAX_LINE = 8 * 1024
# Framing reads: a chunk's end, the next chunk's header and a few payload bytes after it.
_FRAMING_READ = 4096


class RecordingHandler(ResponseHandler):
    """aiohttp's client protocol, keeping each response's first raw bytes for a take-over."""

    raw: list[bytes] | None = None
    raw_size = 0

    def set_response_params(self, **kwargs: Any) -> None:
        """A new request on this connection: forget the last response's bytes."""
        self.raw = []
        self.raw_size = 0
        super().set_response_params(**kwargs)

    def data_received(self, data: bytes) -> None:
        """Keep a reference to ``data`` (no copy) while the response is young, then parse."""
        if self.raw is not None:
            self.raw_size += len(data)
            if self.raw_size <= RAW_LIMIT:
                self.raw.append(data)
            else:
                self.raw = None
        super().data_received(data)
        if self.raw is not None:
            # A whole response (a JSON answer) needs no take-over: an idle pooled connection
            # must not hold on to its bytes.
            payload = getattr(self, "_payload", None)
            if payload is not None and payload.is_eof():
                self.raw = None

    def forget_raw(self) -> None:
        """Drop the kept bytes (the take-over is decided)."""
        self.raw = None


class RecordingConnector(aiohttp.TCPConnector):
    """A ``TCPConnector`` whose connections use :class:`RecordingHandler`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # aiohttp has no public hook for the protocol class; its tests pin this down.
        factory: Any = functools.partial(RecordingHandler, loop=self._loop)
        self._factory = factory


class Phase(Enum):
    """Where the parser stands in the chunked framing."""

    SIZE = "size"  # reading a chunk-size line
    DATA = "data"  # ``remaining`` payload bytes of the current chunk to come
    DATA_END = "data end"  # the CRLF after a chunk's payload
    TRAILER = "trailer"  # trailer lines after the last chunk, up to an empty one
    DONE = "done"


class MalformedChunk(Exception):
    """The runtime's chunked framing is broken."""


class ChunkFraming:
    """An incremental parser of chunked framing that leaves the payload bytes to its caller."""

    def __init__(self) -> None:
        self.phase = Phase.SIZE
        self.remaining = 0
        self._line = bytearray()

    def advance(self, data: bytes, pos: int = 0) -> int:
        """Consume framing bytes from ``data``, starting at ``pos``, until payload is due (phase
        ``DATA``), the body ended (``DONE``) or ``data`` ran out; return where it stopped."""
        end = len(data)
        while pos < end and self.phase not in (Phase.DATA, Phase.DONE):
            # Searched in place: a take-over parses up to RAW_LIMIT bytes, never copied.
            newline = data.find(b"\n", pos)
            stop = end if newline < 0 else newline + 1
            self._line += data[pos:stop]
            pos = stop
            if len(self._line) > _MAX_LINE:
                raise MalformedChunk("chunk framing line too long")
            if newline < 0:
                break
            line = bytes(self._line)
            self._line.clear()
            self._line_done(line)
        return pos

    def _line_done(self, line: bytes) -> None:
        if not line.endswith(b"\r\n"):
            raise MalformedChunk("chunk framing line not ended by CRLF")
        line = line[:-2]
        if self.phase is Phase.DATA_END:
            if line:
                raise MalformedChunk("chunk payload longer than its size")
            self.phase = Phase.SIZE
        elif self.phase is Phase.SIZE:
            digits = line.split(b";", 1)[0].strip(b" \t")
            if not digits or len(digits) > 16 or digits.strip(b"0123456789abcdefABCDEF"):
                raise MalformedChunk(f"bad chunk size {digits[:20]!r}")
            size = int(digits, 16)
            if size:
                self.phase = Phase.DATA
                self.remaining = size
            else:
                self.phase = Phase.TRAILER
        elif self.phase is Phase.TRAILER and not line:
            self.phase = Phase.DONE

    def took(self, n: int) -> None:
        """``n`` payload bytes of the current chunk were handled."""
        self.remaining -= n
        if not self.remaining:
            self.phase = Phase.DATA_END

    def payload_in(self, data: bytes) -> int:
        """Parse raw body bytes whose payload was already handled elsewhere; return its size."""
        payload = 0
        pos, end = 0, len(data)
        while pos < end:
            pos = self.advance(data, pos)
            if self.phase is Phase.DATA and pos < end:
                n = min(self.remaining, end - pos)
                self.took(n)
                payload += n
                pos += n
            elif self.phase is Phase.DONE:
                break
        return payload


def take_over(protocol: Any, delivered: int) -> ChunkFraming | None:
    """The framing state after the raw bytes ``protocol`` kept for this response, when they hold
    the headers and exactly ``delivered`` payload bytes (what aiohttp's parser handed on)."""
    if not isinstance(protocol, RecordingHandler) or protocol.raw is None:
        return None
    raw = b"".join(protocol.raw)
    protocol.forget_raw()
    start = 0
    while True:
        head_end = raw.find(b"\r\n\r\n", start)
        if head_end < 0:
            return None
        # An interim 1xx answer comes before the real one.
        if raw[start : start + 10].startswith((b"HTTP/1.1 1", b"HTTP/1.0 1")):
            start = head_end + 4
            continue
        break
    framing = ChunkFraming()
    try:
        payload = framing.payload_in(raw[head_end + 4 :])
    except MalformedChunk:
        return None
    if payload != delivered or framing.phase is Phase.DONE:
        return None
    return framing


def forward(channel: Channel, framing: ChunkFraming) -> Copy:
    """Forward the rest of a chunked body from ``channel``'s runtime socket to its caller's,
    each chunk's payload spliced under a chunk header of ours; ends before the last chunk
    (the response writer sends ``0\\r\\n\\r\\n``). Broken framing is :class:`UpstreamClosed`."""
    pending = b""  # runtime bytes read with the framing and not yet handled
    out = bytearray()  # framing (and payload bytes read with it) for the caller
    while True:
        if framing.phase is Phase.DATA:
            size = framing.remaining
            out += b"%x\r\n" % size
            take = min(len(pending), size)
            if take:
                out += pending[:take]
                pending = pending[take:]
                framing.took(take)
                channel.counted(take)
            rest = size - take
            if rest:
                yield from channel.send(bytes(out))
                out.clear()
                yield from channel.move(rest, last=False)
                framing.took(rest)
            out += b"\r\n"
            continue
        if framing.phase is Phase.DONE:
            if out:
                yield from channel.send(bytes(out))
            return
        if not pending:
            pending = yield from channel.receive(_FRAMING_READ)
        try:
            used = framing.advance(pending)
        except MalformedChunk as exc:
            message = f"runtime sent broken chunked framing: {exc}"
            raise UpstreamClosed(message, channel.moved) from None
        pending = pending[used:]


async def forward_chunked(
    src_fd: int,
    dst_fd: int,
    framing: ChunkFraming,
    *,
    idle_timeout_s: float,
    on_progress: Callable[[int], None] | None = None,
    threads: int = 0,
) -> int:
    """Forward the rest of a chunked body (see :func:`forward`) from socket ``src_fd`` to
    socket ``dst_fd``; return the payload bytes moved. Raises what
    :func:`gateway.http.streaming.splice.splice_copy` raises."""
    channel = Channel(src_fd, dst_fd, on_progress)
    try:
        await run_copy(
            channel, forward(channel, framing), idle_timeout_s=idle_timeout_s, threads=threads
        )
        return channel.moved
    finally:
        channel.close()
