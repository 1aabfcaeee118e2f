"""A runtime that misbehaves on purpose, speaking raw bytes over a real socket.

aiohttp's own server would refuse to send most of these answers (a wrong Content-Length,
garbage instead of a status line), so this one writes HTTP by hand. What it does is chosen by
the webhook path, ``/<behaviour>?<options>``:

``ok``            ``200`` JSON ``{"ok": true}`` (or a small file with ``file=1``, named by
                  ``name`` in an RFC 5987 ``filename*``)
``pieces``        ``200`` JSON of ``size`` bytes, written in 64 KiB pieces 10 ms apart
``hang-headers``  reads the request, then says nothing until the gateway hangs up
``hang-body``     headers with ``Content-Length: <length>``, ``send`` bytes, then silence
``short-length``  claims ``length`` bytes, sends ``send`` (fewer), closes the socket
``long-length``   claims ``length`` bytes, sends ``send`` (more), then waits
``garbage-json``  ``200 application/json`` whose body is not JSON
``garbage-http``  bytes that are no HTTP response at all, then closes
``endless``       claims 10 GiB (``chunked=1``: chunked) and writes as fast as it is read
``close-early``   closes the socket without answering
``close-mid-body`` headers, ``send`` bytes of ``length``, then closes
``chunks``        a chunked file in chunks of ``sizes`` (comma-separated, each header written
                  apart from its payload, one with an extension), then trailers with
                  ``trailers=1``; ``die=N``: closes halfway through the payload of chunk N
                  (``then=continue``: goes on with the next chunk instead)
``stream``        an n8n streaming answer: one chunk line, then ``then=hang|close|garbage``

Every connection is counted while open, so a test can tell that the gateway let go of each.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

TEN_GIB = 10 * 1024**3
_CHUNK = 256 * 1024
_BLOCK = bytes(range(256)) * (4 * _CHUNK // 256)


@dataclass
class RogueStats:
    """What the rogue runtime saw and did."""

    requests: list[str] = field(default_factory=list)
    open_connections: int = 0
    sent_bytes: int = 0
    # Bytes of the endless body written so far (the slow-reader case watches it grow).
    endless_sent: int = 0


class RogueRuntime:
    """A TCP server on 127.0.0.1 answering with the misbehaviour its path names."""

    def __init__(self) -> None:
        self.stats = RogueStats()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    def url(self, behaviour: str, **options: object) -> str:
        """The webhook URL for one behaviour."""
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"http://127.0.0.1:{self.port}/{behaviour}" + (f"?{query}" if query else "")

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and drop every connection still open."""
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    async def wait_all_closed(self, timeout: float = 10.0) -> int:
        """Wait until no connection is open (bounded); return how many still are."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.stats.open_connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        return self.stats.open_connections

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        # Named, so that a census of the gateway's tasks can leave the runtime's out.
        task.set_name(f"rogue-{id(task)}")
        self._handlers.add(task)
        self.stats.open_connections += 1
        try:
            await self._one_request(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.stats.open_connections -= 1
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        target = lines[0].split(" ")[1]
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length:
            await reader.readexactly(length)
        parts = urlsplit(target)
        behaviour = parts.path.strip("/")
        options = dict(parse_qsl(parts.query))
        self.stats.requests.append(behaviour)
        await _BEHAVIOURS[behaviour](self, reader, writer, options)

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()
        self.stats.sent_bytes += len(data)


def _head(status: str, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _file_headers(length: int | None) -> dict[str, str]:
    headers = {"Content-Type": "application/pdf"}
    if length is None:
        headers["Transfer-Encoding"] = "chunked"
    else:
        headers["Content-Length"] = str(length)
    return headers


async def _until_peer_leaves(reader: asyncio.StreamReader) -> None:
    """Keep the socket open, sending nothing, until the other side closes it."""
    while await reader.read(65536):
        pass


async def _ok(
    rogue: RogueRuntime, reader: asyncio.StreamReader, w: asyncio.StreamWriter, o: dict[str, str]
) -> None:
    if o.get("file"):
        body = _BLOCK[:4096]
        headers = _file_headers(len(body))
        if "name" in o:
            headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{o['name']}"
        await rogue._send(w, _head("200 OK", headers) + body)
    else:
        body = b'{"ok": true}'
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        await rogue._send(w, _head("200 OK", headers) + body)
    await _until_peer_leaves(reader)


async def _pieces(
    rogue: RogueRuntime, reader: asyncio.StreamReader, w: asyncio.StreamWriter, o: dict[str, str]
) -> None:
    size = int(o.get("size", 2_000_000))
    filler = "x" * (size - len('{"outputs": 7, "text": ""}'))
    body = ('{"outputs": 7, "text": "' + filler + '"}').encode()
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    await rogue._send(w, _head("200 OK", headers))
    for start in range(0, len(body), 65536):
        await rogue._send(w, body[start : start + 65536])
        await asyncio.sleep(0.01)
    await _until_peer_leaves(reader)


async def _hang_headers(
    rogue: RogueRuntime, reader: asyncio.StreamReader, w: asyncio.StreamWriter, o: dict[str, str]
) -> None:
    await _until_peer_leaves(reader)


async def _hang_body(
    rogue: RogueRuntime, reader: asyncio.StreamReader, w: asyncio.StreamWriter, o: dict[str, str]
) -> None:
    length, send = int(o.get("length", 1_000_000)), int(o.get("send", 100_000))
    content_type = o.get("type", "application/pdf")
    headers = {"Content-Type": content_type, "Content-Length": str(length)}
    await rogue._send(w, _head("200 OK", headers) + _BLOCK[:send])
    await _until_peer_leaves(reader)


async def _short_length(
    rogue: RogueRuntime, reader: asyncio.StreamReader, w: asyncio.StreamWriter, o: dict[str, str]
) -> None:
    length, send = int(o.get("length", 1_000_000)), int(o.get("send", 100_000))
    content_type = o.get("type", "application/pdf")
    headers = {"Content-Type": content_type, "Content-Length": str(length)}
    await rogue._send(w, _head("200 OK", headers) + b"{" + _BLOCK[: send - 1])


async def _long_length(
    rogue: RogueRuntime, reader: asyncio.StreamReader, w: asyncio.StreamWriter, o: dict[str, str]
) -> None:
    length, send = int(o.get("length", 4096)), int(o.get("send", 100_000))
    content_type = o.get("type", "application/pdf")
    headers = {"Content-Type": content_type, "Content-Length": str(length)}
    body = b'{"ok": true}' if content_type == "application/json" else b""
    body += _BLOCK[: send - len(body)]
    await rogue._send(w, _head("200 OK", headers) + body)
    await _until_peer_leaves(reader)


async def _garbage_json(
    rogue: RogueRuntime, reader: asyncio.StreamReader, w: asyncio.StreamWriter, o: dict[str, str]
) -> None:
    body = b"<html><body>502 Bad Gateway \xff\xfe not JSON</body></html>"
    headers = {
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "Connection": "close",
    }
    await rogue._send(w, _head("200 OK", headers) + body)


async def _garbage_http(
    rogue: RogueRuntime, reader: asyncio.StreamReader, w: asyncio.StreamWriter, o: dict[str, str]
) -> None:
    await rogue._send(w, b"SSH-2.0-OpenSSH_9.6\r\n\x00\xff\xfe garbage \r\n\r\n")


async def _endless(
    rogue: RogueRuntime, reader: asyncio.StreamReader, w: asyncio.StreamWriter, o: dict[str, str]
) -> None:
    chunked = bool(o.get("chunked"))
    await rogue._send(w, _head("200 OK", _file_headers(None if chunked else TEN_GIB)))
    block = _BLOCK[:_CHUNK]
    piece = b"%x\r\n" % _CHUNK + block + b"\r\n" if chunked else block
    # Written only as fast as the other side takes it (drain), never more than the 10 GiB.
    while rogue.stats.endless_sent < TEN_GIB:
        await rogue._send(w, piece)
        rogue.stats.endless_sent += _CHUNK


async def _close_early(
    rogue: RogueRuntime, reader: asyncio.StreamReader, w: asyncio.StreamWriter, o: dict[str, str]
) -> None:
    return


async def _close_mid_body(
    rogue: RogueRuntime, reader: asyncio.StreamReader, w: asyncio.StreamWriter, o: dict[str, str]
) -> None:
    length, send = int(o.get("length", 1_000_000)), int(o.get("send", 100_000))
    await rogue._send(w, _head("200 OK", _file_headers(length)) + _BLOCK[:send])


def chunks_payload(size: int) -> bytes:
    """The payload ``chunks`` sends, ``size`` bytes in all (no period that could hide a shift)."""
    return random.Random(30).randbytes(size)


async def _chunks(
    rogue: RogueRuntime, reader: asyncio.StreamReader, w: asyncio.StreamWriter, o: dict[str, str]
) -> None:
    sizes = [int(size) for size in o["sizes"].split(",")]
    die = int(o.get("die", -1))
    payload = chunks_payload(sum(sizes))
    await rogue._send(w, _head("200 OK", _file_headers(None)))
    at = 0
    for index, size in enumerate(sizes):
        # Header and payload apart, and the header split too: framing across reads.
        header = b"%x;name=value\r\n" % size if index == 1 else b"%X\r\n" % size
        await rogue._send(w, header[:1])
        await asyncio.sleep(0.001)
        await rogue._send(w, header[1:])
        if index == die:
            await rogue._send(w, payload[at : at + size // 2])
            if o.get("then") != "continue":
                return
            # Framing broken: the next chunk follows a payload shorter than its header said.
            at += size
            continue
        await rogue._send(w, payload[at : at + size] + b"\r\n")
        at += size
    trailers = b"X-Checksum: 1234\r\nX-Other: 5\r\n" if o.get("trailers") else b""
    await rogue._send(w, b"0\r\n" + trailers + b"\r\n")
    await _until_peer_leaves(reader)


async def _stream(
    rogue: RogueRuntime, reader: asyncio.StreamReader, w: asyncio.StreamWriter, o: dict[str, str]
) -> None:
    headers = {"Content-Type": "application/json; charset=utf-8", "Transfer-Encoding": "chunked"}
    line = (
        b'{"type":"item","content":"Hello","metadata":{"nodeId":"n1","nodeName":"Agent 1",'
        b'"itemIndex":0,"runIndex":0,"timestamp":1}}\n'
    )
    await rogue._send(w, _head("200 OK", headers) + b"%x\r\n" % len(line) + line + b"\r\n")
    then = o.get("then", "hang")
    if then == "garbage":
        junk = b"\x00\xff<html>not a chunk</html>\n"
        await rogue._send(w, b"%x\r\n" % len(junk) + junk + b"\r\n")
    if then != "close":
        await _until_peer_leaves(reader)


_BEHAVIOURS = {
    "ok": _ok,
    "pieces": _pieces,
    "hang-headers": _hang_headers,
    "hang-body": _hang_body,
    "short-length": _short_length,
    "long-length": _long_length,
    "garbage-json": _garbage_json,
    "garbage-http": _garbage_http,
    "endless": _endless,
    "close-early": _close_early,
    "close-mid-body": _close_mid_body,
    "chunks": _chunks,
    "stream": _stream,
}
