"""HTTP routes the app serves next to Streamlit's own (mounted by ``ui/app.py`` through ``st.App``).

    PUT /api/uploads/{token}          the upload widget streams a file here; it goes to disk as it arrives
    GET /api/jobs/{job_id}/video      the finished video: streamed with Range support from local storage, or a
                                      redirect to a freshly presigned S3 URL; ``?download=1`` makes it an
                                      attachment named after the title (e.g. holiday-3d_LRF_Full_SBS.mp4)

Why not Streamlit's widgets: ``st.file_uploader`` and ``st.video(path)`` both hold the whole file in the server's
memory. The video route also means a link (the player, the download button, an M3U playlist) never expires: every
request signs a new short-lived URL.

Both routes check the same identity as the pages (``stereo_spot.ui.auth``): an upload token is accepted only from the
user it was issued to, and the video of someone else's job is answered like a job that does not exist.

Cross-site requests: the upload is a ``PUT`` (a browser must ask permission first, which is never granted) to a
token only this process issued; the video route only reads.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from stereo_spot import keys
from stereo_spot.models import JobStatus
from stereo_spot.naming import result_file_name, result_media_type
from stereo_spot.ports import StoreError
from stereo_spot.ui import auth, services
from stereo_spot.ui.backend import backend_for, current_settings, staging_area

log = logging.getLogger(__name__)

UPLOAD_PATH = "/api/uploads/"
VIDEO_PATH = "/api/jobs/{job_id}/video"
# Short: a leaked link stops working soon; the route signs a new one for every request anyway.
PRESIGN_SECONDS = 15 * 60


def video_path(job_id: str, *, download: bool = False) -> str:
    path = VIDEO_PATH.format(job_id=keys.validate_job_id(job_id))
    return path + ("?download=1" if download else "")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _identity(request: Request) -> auth.Identity | None:
    peer = request.client.host if request.client else None
    return auth.request_identity(request.headers, request.cookies, current_settings(), peer)


NOT_SIGNED_IN = "not signed in: open the app's page first (through the sign-in proxy when there is one)"


async def receive_upload(request: Request) -> Response:
    token = request.path_params["token"]
    user = _identity(request)
    if user is None:
        return _error(401, NOT_SIGNED_IN)
    area = staging_area()
    if not area.is_issued(token, user.user):
        return _error(403, "This upload form has expired (the app was restarted or the file was already used); "
                           "reload the page and choose the file again.")
    name = unquote(request.headers.get("x-file-name", "")) or "upload"
    declared: int | None = None
    if request.headers.get("content-length"):
        try:
            declared = int(request.headers["content-length"])
        except ValueError:
            return _error(400, "invalid Content-Length header")
    await anyio.to_thread.run_sync(area.sweep)
    staged = await area.receive_async(token, name, request.stream(), declared)
    if staged.error:
        return _error(413 if staged.too_large else 400, staged.error)
    return JSONResponse({"name": staged.name, "size": staged.size})


def _video_response(job_id: str, download: bool, user: auth.Identity) -> Response:
    settings = current_settings()
    backend = backend_for(settings)
    job = auth.visible_job(backend.jobs, job_id, user)
    if job is None or job.status != JobStatus.COMPLETED:
        return _error(404, f"job {job_id} has no finished video")
    if (delivered := services.delivered_outside_store(job)) is not None:
        return _error(404, f"job {job_id} was converted on the command line and its result written to "
                           f"{delivered}; the app serves only results in its own store")
    name = result_file_name(job.title, job.settings)
    key = keys.final_key(job_id)
    local_path = getattr(backend.objects, "local_path", None)
    if local_path is not None:
        path = local_path(backend.output_bucket, key)
        if not path.is_file():
            return _error(404, f"the video of job {job_id} is missing from storage")
        return FileResponse(path, media_type=result_media_type(job.settings), filename=name,
                            content_disposition_type="attachment" if download else "inline")
    url = backend.objects.presign_download(backend.output_bucket, key, expires_seconds=PRESIGN_SECONDS,
                                           download_name=name if download else None)
    return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})


async def job_video(request: Request) -> Response:
    job_id = request.path_params["job_id"]
    user = _identity(request)
    if user is None:
        return _error(401, NOT_SIGNED_IN)
    try:
        keys.validate_job_id(job_id)
    except keys.InvalidKey:
        return _error(404, f"{job_id!r} is not a job id")
    download = request.query_params.get("download") == "1"
    try:
        # Store calls block (SQLite, boto3): keep them off the event loop that serves every page.
        return await anyio.to_thread.run_sync(_video_response, job_id, download, user)
    except (StoreError, OSError) as exc:
        log.warning("video of job %s: %s", job_id, exc)
        return _error(503, f"the job store cannot be reached: {exc}")


def api_routes() -> list[Any]:
    return [
        Route(UPLOAD_PATH + "{token}", receive_upload, methods=["PUT"]),
        Route(VIDEO_PATH, job_video, methods=["GET", "HEAD"]),
    ]
