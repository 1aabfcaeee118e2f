"""The ``/v0`` API: job download packages and their signed URLs.

It is its own sub-application so that every failure under ``/v0`` (the handlers' own, and
aiohttp's 404, 405 and 413) answers in the /v0 error shape, ``{"error": {"code", "message",
"details"}}``, while the rest of the gateway keeps the agent API's.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from gateway.http.access.authentication import KeyHeader, authenticate_ingest_key
from gateway.http.app_keys import PACKAGE_SERVICE
from gateway.http.middleware import v0_errors_to_json
from gateway.http.middleware.request_info import note_run, note_streamed_bytes
from gateway.http.parsing.path_ids import v0_path_id
from gateway.http.streaming.attachments import attachment_response, send_attachment
from gateway.http.views import package_ticket_view
from gateway.packages.archive import ArchiveError

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()


def create_v0_app() -> web.Application:
    """The ``/v0`` sub-application (mounted with ``app.add_subapp("/v0", ...)``)."""
    app = web.Application(middlewares=[v0_errors_to_json])
    app.router.add_routes(routes)
    return app


@routes.put("/workflows/{workflow_id}/jobs/{job_id}/download")
async def create_download(request: web.Request) -> web.Response:
    """The /v0 API: the job's download package, ``{id, status, signed_url, workflowId}``."""
    org_id = await authenticate_ingest_key(request, KeyHeader.V0)
    workflow_id = v0_path_id(request, "workflow_id")
    job_id = v0_path_id(request, "job_id")
    if request.body_exists:
        # Nothing is read from a body; reading (bounded by client_max_size) gives a clear 413
        # for an oversized one instead of leaving it on the connection.
        await request.read()
    note_run(request, run_id=job_id, agent_id=workflow_id)
    ticket = await request.config_dict[PACKAGE_SERVICE].request(org_id, workflow_id, job_id)
    return web.json_response(package_ticket_view(ticket), headers={"Cache-Control": "no-store"})


@routes.get("/packages/{package_id}.zip")
async def fetch_package(request: web.Request) -> web.StreamResponse:
    """A package's ZIP, streamed, for whoever holds its signed URL (until it expires)."""
    opened = await request.config_dict[PACKAGE_SERVICE].open(
        request.rel_url.raw_path, request.query.get("expires"), request.query.get("signature")
    )
    note_run(request, run_id=opened.run_id)
    response = attachment_response(
        content_type="application/zip",
        # The name is the gateway's own ASCII slug: no filename* needed.
        disposition=f'attachment; filename="{opened.filename}"',
        size=opened.archive.size,
    )
    sent = 0

    def progress(total: int) -> None:
        nonlocal sent
        sent = total
        note_streamed_bytes(request, total)

    try:
        await send_attachment(request, response, opened.archive.chunks(), on_progress=progress)
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
    if request.method != "HEAD":
        log.info("package_downloaded", package_id=str(opened.package_id), size=sent)
    return response
