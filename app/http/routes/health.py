"""Liveness and readiness: the process answers and the database does."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.state import app_state


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


routes = [Route("/healthz", healthz, methods=["GET"])]
