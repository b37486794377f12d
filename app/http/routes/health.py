"""What probes and scrapers read: liveness (`/healthz`), readiness (`/readyz`), `/metrics`."""

from __future__ import annotations

import logging
import secrets

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.core.outage import RETRY_AFTER_SECONDS, is_unavailable
from app.core.version import VERSION
from app.errors import ApiError, error_response
from app.http.admin import require_admin
from app.http.auth.errors import Unauthorized
from app.http.auth.identity import bearer_token
from app.http.state import app_state
from app.storage.migrations import pending_migrations

log = logging.getLogger(__name__)
# What /readyz says of a failure to a caller without METRICS_TOKEN or an admin's token: the
# code says which check failed; the rest is the operator's.
NOT_READY = "not ready: send METRICS_TOKEN or an admin's token for the details"


async def healthz(request: Request) -> Response:
    """Alive, and the database answers; 503 while it does not (nothing escapes as an error:
    a probe must get an answer, not a dropped connection).
    ---
    responses:
      200:
        description: alive, and the database answers
        content: {application/json: {schema: {type: object}}}
      503:
        description: the database does not answer (`Retry-After`)
        content: {application/json: {schema: {type: object}}}
    """
    state = app_state(request)
    try:
        await state.database.fetch_val("SELECT 1")
    except Exception:
        return JSONResponse(
            {"status": "unavailable", "database": "down"},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    return JSONResponse(
        {
            "status": "ok",
            "version": VERSION,
            "database": "ok",
            "live_replies": len(state.runs.live),
            "upstream": "simulator" if state.settings.use_simulator else "openrouter",
        }
    )


async def _is_operator(request: Request) -> bool:
    """Whether the caller sent METRICS_TOKEN or is an admin (ADMIN_TOKEN, the admin claim)."""
    sent = bearer_token(request)
    if sent is None:
        return False
    token = app_state(request).settings.metrics_token
    if token is not None and secrets.compare_digest(
        sent.encode(), token.get_secret_value().encode()
    ):
        return True
    try:
        await require_admin(request)
    except ApiError:
        return False
    return True


async def readyz(request: Request) -> Response:
    """Ready: the database answers and is migrated, and OpenRouter accepts our key (503 with
    the reason's code otherwise; app/ops/readiness.py).

    Public (probes): ready, or the reason's code. The details (the key's label, usage and
    remaining credit, what failed) only for METRICS_TOKEN or an admin.

    ---
    responses:
      200:
        description: ready
        content: {application/json: {schema: {type: object}}}
      503: database_unavailable migrations_pending upstream_key_invalid upstream_unavailable
    """
    state = app_state(request)
    detailed = await _is_operator(request)

    def detail(message: str) -> str:
        return message if detailed else NOT_READY

    try:
        pending = await pending_migrations(state.database, url=state.settings.database_url)
    except Exception as exc:
        if not is_unavailable(exc):
            log.exception("readiness: the database does not answer")
        return error_response(
            503,
            "database_unavailable",
            detail("the database does not answer"),
            {"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    if pending:
        return error_response(
            503,
            "migrations_pending",
            detail(f"the database lacks {len(pending)} migration(s): run `python -m app migrate`"),
        )
    key = await state.key_check.status()
    if state.metrics is not None and key.limit_remaining is not None:
        state.metrics.limit_remaining.set(float(key.limit_remaining))
    if key.code == "upstream_key_invalid":
        return error_response(503, "upstream_key_invalid", detail(key.message))
    if key.code == "upstream_unavailable":
        return error_response(503, "upstream_unavailable", detail(key.message))
    if not detailed:
        return JSONResponse({"status": "ready"})
    return JSONResponse(
        {"status": "ready", "database": "ok", "migrations": "ok", "openrouter": key.to_json()}
    )


async def metrics(request: Request) -> Response:
    """Prometheus's text format, for `Authorization: Bearer METRICS_TOKEN`; without a
    METRICS_TOKEN set the path does not exist (404), so it reveals nothing.
    ---
    responses:
      200:
        description: Prometheus's text format
        content: {text/plain: {schema: {type: string}}}
      401: unauthorized invalid_token
      404: not_found
    """
    state = app_state(request)
    token = state.settings.metrics_token
    if token is None or state.metrics is None:
        raise ApiError(404, "not_found", "Not Found")
    sent = bearer_token(request)
    if sent is None:
        raise Unauthorized("unauthorized", "send Authorization: Bearer <METRICS_TOKEN>")
    if not secrets.compare_digest(sent.encode(), token.get_secret_value().encode()):
        raise Unauthorized("invalid_token", "that is not the METRICS_TOKEN")
    return Response(await state.metrics.exposition(state.database), media_type=CONTENT_TYPE_LATEST)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
