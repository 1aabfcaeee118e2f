"""A discarding HTTP client for the download benchmark, used when curl is not installed.

Reads the body with ``iter_any()`` (uvloop when available), keeps nothing, and prints one
JSON line: ``{"status", "size", "seconds", "run_id"}``. ``seconds`` runs from just before the
request is sent to the last byte, like curl's ``time_total``.

    python bench/fetch_client.py GET http://127.0.0.1:9100/bytes?size=1048576
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any

import aiohttp


async def fetch(
    method: str, url: str, headers: dict[str, str], data: str | None, timeout_s: float
) -> dict[str, Any]:
    """Download ``url`` once, discarding the body; return what was received."""
    async with aiohttp.ClientSession(
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding",),
        read_bufsize=1024 * 1024,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    ) as session:
        started = time.perf_counter()
        async with session.request(
            method, url, headers=headers, data=data.encode() if data is not None else None
        ) as response:
            size = 0
            async for chunk in response.content.iter_any():
                size += len(chunk)
            seconds = time.perf_counter() - started
            return {
                "status": response.status,
                "size": size,
                "seconds": seconds,
                "run_id": response.headers.get("X-Run-Id"),
            }


def main() -> None:
    """Parse arguments, fetch once, print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method")
    parser.add_argument("url")
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--data", help="request body")
    parser.add_argument("--max-time", type=float, default=600.0)
    args = parser.parse_args()
    headers = {}
    for raw in args.header:
        name, _, value = raw.partition(":")
        headers[name.strip()] = value.strip()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    result = asyncio.run(fetch(args.method, args.url, headers, args.data, args.max_time))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
