"""What probes and scrapers read: liveness (`/healthz`), readiness (`/readyz`), `/metrics`."""

from __future__ import annotations

import logging
import secrets

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.errors import ApiError, error_response
from app.http.auth.errors import Unauthorized
from app.http.auth.identity import bearer_token
from app.http.state import app_state
from app.storage.migrations import pending_migrations

log = logging.getLogger(__name__)


async def healthz(request: Request) -> Response:
    state = app_state(request)
    try:
        await state.database.fetch_val("SELECT 1")
    except Exception:
        return JSONResponse({"status": "unavailable", "database": "down"}, status_code=503)
    return JSONResponse(
        {
            "status": "ok",
            "database": "ok",
            "live_replies": len(state.runs.live),
            "upstream": "simulator" if state.settings.use_simulator else "openrouter",
        }
    )


async def readyz(request: Request) -> Response:
    """Ready: the database answers and is migrated, and OpenRouter accepts our key (503 with
    the reason's code otherwise; app/ops/readiness.py)."""
    state = app_state(request)
    try:
        pending = await pending_migrations(state.database, url=state.settings.database_url)
    except Exception:
        log.exception("readiness: the database does not answer")
        return error_response(503, "database_unavailable", "the database does not answer")
    if pending:
        return error_response(
            503,
            "migrations_pending",
            f"the database lacks {len(pending)} migration(s): run `python -m app migrate`",
        )
    key = await state.key_check.status()
    if state.metrics is not None and key.limit_remaining is not None:
        state.metrics.limit_remaining.set(float(key.limit_remaining))
    if key.code == "upstream_key_invalid":
        return error_response(503, "upstream_key_invalid", key.message)
    if key.code == "upstream_unavailable":
        return error_response(503, "upstream_unavailable", key.message)
    return JSONResponse(
        {"status": "ready", "database": "ok", "migrations": "ok", "openrouter": key.to_json()}
    )


async def metrics(request: Request) -> Response:
    """Prometheus's text format, for `Authorization: Bearer METRICS_TOKEN`; without a
    METRICS_TOKEN set the path does not exist (404), so it reveals nothing."""
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
