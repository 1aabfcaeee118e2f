"""Sending a stored file as an attachment: workflow execute's signed input files and ``/v0``'s
package ZIPs.

Both answer a signed URL with the file's bytes, streamed chunk by chunk, under headers that
keep it out of shared caches and stop a browser from sniffing it into something it renders.
A ``HEAD`` gets the same headers and no body.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable
from urllib.parse import quote

from aiohttp import web


def attachment_response(*, content_type: str, disposition: str, size: int) -> web.StreamResponse:
    """The response for a ``size``-byte file, its headers set and nothing sent yet."""
    response = web.StreamResponse(
        headers={
            "Content-Type": content_type,
            "Content-Disposition": disposition,
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
        }
    )
    response.content_length = size
    return response


async def send_attachment(
    request: web.Request,
    response: web.StreamResponse,
    chunks: AsyncGenerator[bytes, None],
    *,
    on_progress: Callable[[int], None] | None = None,
) -> None:
    """Send ``response``'s headers, then ``chunks`` (none for ``HEAD``), then its end.

    ``chunks`` is closed as soon as the copy stops, however it stops. ``on_progress`` hears the
    bytes sent so far after each chunk. The caller leaving or ``chunks`` failing raise out of
    here with the headers already out (so the caller decides what that means).
    """
    async with contextlib.aclosing(chunks):
        await response.prepare(request)
        if request.method != "HEAD":
            sent = 0
            async for chunk in chunks:
                await response.write(chunk)
                if on_progress is not None:
                    sent += len(chunk)
                    on_progress(sent)
    await response.write_eof()


def utf8_disposition(name: str) -> str:
    """``attachment`` naming ``name``: an ASCII fallback and the UTF-8 name (RFC 6266)."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
