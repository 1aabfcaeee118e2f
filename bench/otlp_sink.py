"""A local OTLP/HTTP trace sink for the bench: takes every export (``POST /v1/traces``), counts
its bytes and answers as a collector does, so that a traced gateway pays the full export cost
(spans built, batched, encoded and posted) without a collector's own CPU in the figures."""

from __future__ import annotations

import argparse

from aiohttp import web


async def _export(request: web.Request) -> web.Response:
    await request.read()
    # An empty ExportTraceServiceResponse is zero bytes of protobuf.
    return web.Response(body=b"", content_type="application/x-protobuf")


def main() -> None:
    """``python -m bench.otlp_sink --port N``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", _export)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
