"""The ``/v0`` API (seed 003): job download packages and their signed URLs.

It is its own sub-application so that every failure under ``/v0`` (the handlers' own, and
aiohttp's 404, 405 and 413) answers in seed 003's shape, ``{"error": {"code", "message",
"details"}}``, while the rest of the gateway keeps the agent API's.
"""

from __future__ import annotations

import contextlib

import structlog
from aiohttp import web

from gateway.errors import BadRequest, v0_error
from gateway.http.keys import DB_POOL, PACKAGE_SERVICE
from gateway.http.middleware import guard_keys, v0_errors_to_json
from gateway.http.request_info import note_run, note_streamed_bytes
from gateway.packages.archive import ArchiveError
from gateway.security.auth import org_for_v0_key

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()

_MAX_ID = 2**63 - 1


def create_v0_app() -> web.Application:
    """The ``/v0`` sub-application (mounted with ``app.add_subapp("/v0", ...)``)."""
    app = web.Application(middlewares=[v0_errors_to_json, guard_keys])
    app.router.add_routes(routes)
    return app


def _id(request: web.Request, name: str) -> int:
    """A positive integer id from the path; 400 (``invalid_<name>``) otherwise."""
    raw = request.match_info[name]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or not 0 < int(raw) <= _MAX_ID:
        raise v0_error(
            BadRequest,
            f"{name} must be a positive integer id, got {raw[:64]!r}",
            f"invalid_{name}",
            {name: raw[:64]},
        )
    return int(raw)


@routes.put("/workflows/{workflow_id}/jobs/{job_id}/download")
async def create_download(request: web.Request) -> web.Response:
    """Seed 003: the job's download package, ``{id, status, signed_url, workflowId}``."""
    config = request.config_dict
    org_id = await org_for_v0_key(config[DB_POOL], request.headers.get("Authorization"))
    workflow_id = _id(request, "workflow_id")
    job_id = _id(request, "job_id")
    if request.body_exists:
        # Nothing is read from a body; reading (bounded by client_max_size) gives a clear 413
        # for an oversized one instead of leaving it on the connection.
        await request.read()
    note_run(request, run_id=job_id, agent_id=workflow_id)
    ticket = await config[PACKAGE_SERVICE].request(org_id, workflow_id, job_id)
    return web.json_response(ticket.public(), headers={"Cache-Control": "no-store"})


@routes.get("/packages/{package_id}.zip")
async def fetch_package(request: web.Request) -> web.StreamResponse:
    """A package's ZIP, streamed, for whoever holds its signed URL (until it expires)."""
    opened = await request.config_dict[PACKAGE_SERVICE].open(
        request.rel_url.raw_path, request.query.get("expires"), request.query.get("signature")
    )
    note_run(request, run_id=opened.run_id)
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/zip",
            "Content-Disposition": f'attachment; filename="{opened.filename}"',
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
        }
    )
    response.content_length = opened.archive.size
    sent = 0
    async with contextlib.aclosing(opened.archive.chunks()) as chunks:
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        try:
            async for chunk in chunks:
                await response.write(chunk)
                sent += len(chunk)
                note_streamed_bytes(request, sent)
        except ConnectionResetError:
            log.info(
                "package_download_abandoned",
                package_id=str(opened.package_id),
                sent=sent,
                size=opened.archive.size,
            )
            return response
        except ArchiveError as exc:
            # Headers are out: the middleware aborts the connection, so the caller holds a
            # visibly broken ZIP, never a whole-looking wrong one.
            log.error("package_stream_failed", package_id=str(opened.package_id), error=str(exc))
            raise
    await response.write_eof()
    log.info("package_downloaded", package_id=str(opened.package_id), size=sent)
    return response
