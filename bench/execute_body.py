"""How an execute body carrying a base64 file is read: time and peak memory, three ways.

Figures only, never pass/fail. Each way reads the same body from an aiohttp ``StreamReader``
fed in 64 KiB pieces (as a socket delivers it) and ends with the parsed object:

- ``gateway``: what ``gateway/http/parsing/large_bodies.py`` does (ijson fed 4 MiB pieces, body
  never whole);
- ``ijson-64k``: the same parser fed as the bytes arrive (64 KiB pieces);
- ``read+loads``: the body read whole, then ``json.loads``.

    .venv/bin/python bench/execute_body.py --file-mb 20 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any
from unittest.mock import Mock

import aiohttp
import ijson

from gateway.http.parsing.large_bodies import _FEED_SIZE

PIECE = 64 * 1024


def feed(body: bytes) -> aiohttp.StreamReader:
    reader = aiohttp.StreamReader(
        Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop()
    )
    for start in range(0, len(body), PIECE):
        reader.feed_data(body[start : start + PIECE])
    reader.feed_eof()
    return reader


class Pieces:
    def __init__(self, reader: aiohttp.StreamReader, size: int) -> None:
        self._reader = reader
        self._size = size

    async def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        out = bytearray()
        while len(out) < self._size and (data := await self._reader.read(self._size - len(out))):
            out += data
        return bytes(out)


async def with_ijson(reader: aiohttp.StreamReader, size: int) -> Any:
    async for value in ijson.items_async(Pieces(reader, size), "", use_float=True, buf_size=size):
        return value
    return None


async def read_and_loads(reader: aiohttp.StreamReader) -> Any:
    return json.loads(await reader.read())


async def measure(
    make: Callable[[aiohttp.StreamReader], Awaitable[Any]], body: bytes
) -> tuple[float, float]:
    reader = feed(body)
    tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    started = time.perf_counter()
    value = await make(reader)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    if not isinstance(value, dict) or value["documents"][0]["name"] != "scan.pdf":
        raise SystemExit(f"wrong parse result: {str(value)[:100]}")
    return elapsed, (peak - base) / 2**20


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file-mb", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    content = bytes(range(256)) * (args.file_mb * 4096)
    body = json.dumps(
        {
            "documents": [
                {
                    "type": "file",
                    "name": "scan.pdf",
                    "data": "data:application/pdf;base64," + base64.b64encode(content).decode(),
                }
            ]
        }
    ).encode()
    print(f"body {len(body) / 2**20:.1f} MiB for a {args.file_mb} MiB file; best of {args.runs}")
    ways: dict[str, Callable[[aiohttp.StreamReader], Awaitable[Any]]] = {
        "gateway": lambda r: with_ijson(r, _FEED_SIZE),
        "ijson-64k": lambda r: with_ijson(r, PIECE),
        "read+loads": read_and_loads,
    }
    for name, way in ways.items():
        runs = [await measure(way, body) for _ in range(args.runs)]
        seconds, peak = min(r[0] for r in runs), min(r[1] for r in runs)
        print(f"{name:>11}: {seconds:6.3f} s, peak +{peak:6.1f} MiB")


if __name__ == "__main__":
    asyncio.run(main())
