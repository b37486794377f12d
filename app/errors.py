"""Errors a caller gets before any streaming starts: JSON `{"error": {"code", "message"}}`, 4xx.

Every route raises `ApiError` for bad input; the handlers below turn Starlette's own HTTP errors
(unknown path, wrong method) into the same shape, the database being away into a 503
`database_unavailable` with `Retry-After`, and an unexpected exception into a 500 whose body says
nothing about the internals.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from app.core.outage import CANDIDATES, RETRY_AFTER_SECONDS, describe, is_unavailable

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        # What the status needs beside the body, e.g. `WWW-Authenticate` on a 401.
        self.headers = headers
        # Fields beside `code` and `message` in the error object, e.g. a refused budget's figures.
        self.details = details


def error_response(
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    details: Mapping[str, Any] | None = None,
) -> JSONResponse:
    return JSONResponse(
        {"error": {**(details or {}), "code": code, "message": message}},
        status_code=status,
        headers=headers,
    )


async def api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers, exc.details)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    # Codes spelled out where they are raised, so docs/api.md's table can be checked against
    # them (tests/http/test_error_codes.py). The headers carry what the status needs, e.g.
    # `Allow` for a 405.
    if exc.status_code == 404:
        return error_response(404, "not_found", exc.detail, exc.headers)
    if exc.status_code == 405:
        return error_response(405, "method_not_allowed", exc.detail, exc.headers)
    return error_response(exc.status_code, "http_error", exc.detail, exc.headers)


def database_away() -> ApiError:
    """What a caller gets while the database is away: nothing of the request was saved."""
    return ApiError(
        503,
        "database_unavailable",
        "the database is unavailable; nothing was saved, retry shortly",
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The database is away (app/core/outage.py): a 503 the caller may retry, and one log
    line, not a traceback; any other error of these classes is the bug it is (a 500)."""
    if not is_unavailable(exc):
        raise exc
    log.warning(
        "database unavailable on %s %s (%s)", request.method, request.url.path, describe(exc)
    )
    return await api_error(request, database_away())


async def server_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "the server failed to handle this request")


EXCEPTION_HANDLERS = {
    ApiError: api_error,
    HTTPException: http_error,
    **dict.fromkeys(CANDIDATES, database_unavailable),
    Exception: server_error,
}
