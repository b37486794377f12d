"""Uploads: the images and PDFs a user attaches to a turn (docs/attachments.md).

    POST   /api/uploads               multipart/form-data, one field `file`: 201 its metadata
    GET    /api/uploads/{id}          its metadata
    GET    /api/uploads/{id}/content  its bytes, with its type, sandboxed
    DELETE /api/uploads/{id}          204

Each is the caller's own: another user's id answers 404 `upload_not_found` exactly as one that
is not there. A body over MAX_UPLOAD_BYTES is refused before it is read whole (its declared
length at once, else counted as it arrives: app/http/middleware.py); the multipart parser
spools the file to disk past 1 MiB; what it is comes from its bytes (app/http/media.py), in a
worker thread; then it goes into the database in chunks (app/storage/uploads.py).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import anyio.to_thread
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.core.attachments import MediaType
from app.errors import ApiError
from app.http.auth.identity import identify, identify_from_query
from app.http.input import path_id
from app.http.media import Unsupported, clean_name, keep
from app.http.state import AppState, app_state
from app.storage.tables import new_id
from app.storage.uploads import CHUNK_BYTES, QuotaExceeded

# Served bytes are data, never a page of ours: no type sniffing, no script, no plugin, no
# same-origin access even when a browser opens them as a document.
CONTENT_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cross-Origin-Resource-Policy": "same-origin",
    # An id names one file forever: the browser may keep it (for its user only).
    "Cache-Control": "private, max-age=86400",
}


def _metadata(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "type": row["type"],
        "name": row["name"],
        "size": row["size"],
        "width": row["width"],
        "height": row["height"],
        "pages": row["pages"],
        "digest": row["digest"],
        "created_at": row["created_at"].isoformat(),
    }


def _quota_exceeded(state: AppState, used: int) -> ApiError:
    quota = state.settings.upload_quota_bytes
    return ApiError(
        413,
        "upload_quota_exceeded",
        f"this upload would take your stored files over your quota of {quota} bytes "
        f"({used} bytes used): delete some (DELETE /api/uploads/{{id}}, or their conversations)",
        details={"quota_bytes": quota, "used_bytes": used},
    )


async def create_upload(request: Request) -> Response:
    """An image or a PDF, for a turn's `attachments`.
    ---
    requestBody:
      required: true
      content:
        multipart/form-data:
          schema:
            type: object
            required: [file]
            properties:
              file: {type: string, format: binary}
    responses:
      201:
        description: 'its metadata: id, type, name, size, width, height, pages, digest'
        content: {application/json: {schema: {type: object}}}
      413: upload_too_large upload_quota_exceeded
      415: unsupported_media_type
      422: invalid_field
    """
    state = app_state(request)
    caller = await identify(request)
    settings = state.settings
    try:
        form = await request.form(max_files=1, max_fields=8)
    except HTTPException as exc:  # the parser's refusals: a malformed body, a second file
        raise ApiError(
            422, "invalid_field", f"the body is not a multipart form of one file: {exc.detail}"
        ) from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(
                422, "invalid_field", "send multipart/form-data with the file in a field `file`"
            )
        size = upload.size or 0
        if size > settings.max_upload_bytes:
            raise ApiError(
                413,
                "upload_too_large",
                f"the upload is larger than MAX_UPLOAD_BYTES ({settings.max_upload_bytes} bytes)",
            )
        used = await state.store.uploads.stored_bytes(user_id=caller.user_id)
        if used + size > settings.upload_quota_bytes:
            raise _quota_exceeded(state, used)
        try:
            kept = await anyio.to_thread.run_sync(keep, upload.file)
        except Unsupported as exc:
            raise ApiError(415, "unsupported_media_type", str(exc)) from None
        row = {
            "id": new_id(),
            "user_id": caller.user_id,
            "type": str(kept.type),
            "name": clean_name(upload.filename, kept.type),
            "size": kept.size,
            "width": kept.width,
            "height": kept.height,
            "pages": kept.pages,
            "digest": kept.digest,
        }
        try:
            created = await state.store.uploads.store(
                upload=row, chunks=kept.chunks(CHUNK_BYTES), quota=settings.upload_quota_bytes
            )
        except QuotaExceeded:
            raise _quota_exceeded(
                state, await state.store.uploads.stored_bytes(user_id=caller.user_id)
            ) from None
        finally:
            if kept.file is not upload.file:
                kept.file.close()
    finally:
        await form.close()
    return JSONResponse(_metadata({**row, "created_at": created}), status_code=201)


async def _own(request: Request, *, from_query: bool = False) -> tuple[AppState, dict[str, Any]]:
    state = app_state(request)
    caller = await (identify_from_query(request) if from_query else identify(request))
    upload_id = path_id(request, "upload_id")
    row = await state.store.uploads.get(upload_id=upload_id, user_id=caller.user_id)
    if row is None:
        raise ApiError(404, "upload_not_found", f"no upload {upload_id!r}")
    return state, row


async def get_upload(request: Request) -> Response:
    """
    ---
    responses:
      200:
        description: 'its metadata: id, type, name, size, width, height, pages, digest'
        content: {application/json: {schema: {type: object}}}
      404: upload_not_found
      422: invalid_field
    """
    _, row = await _own(request)
    return JSONResponse(_metadata(row))


def _disposition(row: dict[str, Any]) -> str:
    """Images shown in the page, PDFs downloaded; the name as RFC 6266 spells a UTF-8 one."""
    how = "attachment" if row["type"] == MediaType.PDF else "inline"
    fallback = row["name"].encode("ascii", "replace").decode().replace('"', "'").replace("?", "_")
    return f"{how}; filename=\"{fallback}\"; filename*=UTF-8''{quote(row['name'], safe='')}"


async def upload_content(request: Request) -> Response:
    """Its bytes, streamed from the database a chunk at a time. The token may come as
    `?access_token=` (an `<img>` cannot send a header).
    ---
    responses:
      200:
        description: the file, with its type
        content: {image/png: {}, image/jpeg: {}, image/webp: {}, image/gif: {}, application/pdf: {}}
      404: upload_not_found
      422: invalid_field
    """
    state, row = await _own(request, from_query=True)
    headers = {
        **CONTENT_HEADERS,
        "Content-Disposition": _disposition(row),
        "Content-Length": str(row["size"]),
        "ETag": f'"{row["digest"]}"',
    }
    return StreamingResponse(
        state.store.uploads.chunks(row["id"]), media_type=row["type"], headers=headers
    )


async def delete_upload(request: Request) -> Response:
    """Deletes it, and takes it off the messages that carried it.
    ---
    responses:
      204: deleted
      404: upload_not_found
      422: invalid_field
    """
    state = app_state(request)
    caller = await identify(request)
    upload_id = path_id(request, "upload_id")
    if not await state.store.uploads.delete(upload_id=upload_id, user_id=caller.user_id):
        raise ApiError(404, "upload_not_found", f"no upload {upload_id!r}")
    return Response(status_code=204)


routes = [
    Route("/api/uploads", create_upload, methods=["POST"]),
    Route("/api/uploads/{upload_id}", get_upload, methods=["GET"]),
    Route("/api/uploads/{upload_id}/content", upload_content, methods=["GET"]),
    Route("/api/uploads/{upload_id}", delete_upload, methods=["DELETE"]),
]
