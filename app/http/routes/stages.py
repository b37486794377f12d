"""`/api/admin/stages`: the stage probe's samples (STAGE_PROBE, app/core/stages.py), for
`python -m bench --stages`. Admins only; 404 when the probe is off, as if it did not exist."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.core.stages import StageProbe
from app.errors import ApiError
from app.http.admin import require_admin
from app.http.state import app_state


async def _probe(request: Request) -> StageProbe:
    probe = app_state(request).stages
    if probe is None:
        raise ApiError(404, "not_found", "the stage probe is off (STAGE_PROBE)")
    await require_admin(request)
    return probe


async def read_stages(request: Request) -> Response:
    """Each stage's samples in milliseconds, in the order a request passes them.
    ---
    responses:
      200:
        description: each stage's samples
        content: {application/json: {schema: {type: object}}}
      403: forbidden admin_disabled
      404: not_found
    """
    probe = await _probe(request)
    return JSONResponse({"stages": {str(stage): list(ms) for stage, ms in probe.samples.items()}})


async def clear_stages(request: Request) -> Response:
    """
    ---
    responses:
      204: cleared
      403: forbidden admin_disabled
      404: not_found
    """
    (await _probe(request)).clear()
    return Response(status_code=204)


routes = [
    Route("/api/admin/stages", read_stages, methods=["GET"]),
    Route("/api/admin/stages", clear_stages, methods=["DELETE"]),
]
