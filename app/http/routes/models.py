"""`GET /api/models`: OpenRouter's models with prices and capabilities, filtered and sorted."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.errors import ApiError
from app.http.state import app_state
from app.upstream.models_catalog import CAPABILITIES, SORTS, select_models


def _capabilities(value: str | None) -> list[str]:
    wanted = [part.strip() for part in (value or "").split(",") if part.strip()]
    unknown = [name for name in wanted if name not in CAPABILITIES]
    if unknown:
        raise ApiError(
            422,
            "invalid_query",
            f"unknown capability {', '.join(unknown)}; use any of {', '.join(CAPABILITIES)}",
        )
    return wanted


def _max_price(value: str | None) -> Decimal | None:
    if value is None or not value.strip():
        return None
    try:
        price = Decimal(value.strip())
    except InvalidOperation:
        price = None
    if price is None or not price.is_finite() or price < 0:
        raise ApiError(
            422, "invalid_query", "`max_price` must be a number of USD per 1M output tokens, >= 0"
        )
    return price


async def list_models(request: Request) -> Response:
    """
    ---
    parameters:
      - {name: sort, in: query, schema: {type: string}}
      - {name: capability, in: query, schema: {type: string}}
      - {name: max_price, in: query, schema: {type: string}}
    responses:
      200:
        description: the models a caller may choose
        content: {application/json: {schema: {type: object}}}
      422: invalid_query
    """
    state = app_state(request)
    params = request.query_params
    sort = params.get("sort") or None
    if sort is not None and sort not in SORTS:
        raise ApiError(422, "invalid_query", f"`sort` must be one of {', '.join(SORTS)}")
    capabilities = _capabilities(params.get("capability"))
    max_price = _max_price(params.get("max_price"))
    view = await state.models.get()
    models = select_models(
        view.models,
        recommended=state.models.recommended,
        q=params.get("q"),
        capabilities=capabilities,
        max_price=max_price,
        sort=sort,
    )
    return JSONResponse(
        {
            **view.meta(),
            "ttl_seconds": state.models.ttl,
            "count": len(models),
            "models": [model.to_json() for model in models],
        }
    )


routes = [Route("/api/models", list_models, methods=["GET"])]
