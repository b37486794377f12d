"""Spend, as its user sees it (`GET /api/me/usage`), and per-user budget overrides for admins
(`GET`/`PUT /api/admin/users/{user_id}/budget`)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.core.money import MAX_BUDGET_USD, from_picos, parse_amount, to_picos, usd
from app.errors import ApiError
from app.http.admin import require_admin
from app.http.auth.identity import identify
from app.http.input import json_body
from app.http.state import app_state

FIELDS = ("daily_usd", "monthly_usd")
MAX_USER_ID = 64  # the width of every user_id column


async def my_usage(request: Request) -> Response:
    """
    ---
    responses:
      200:
        description: the caller's spend today and this month, and their limits
        content: {application/json: {schema: {type: object}}}
    """
    caller = await identify(request)
    return JSONResponse(await app_state(request).spend.usage(caller.user_id))


def _user_id(request: Request) -> str:
    user_id = request.path_params["user_id"]
    if not 1 <= len(user_id) <= MAX_USER_ID or not user_id.isprintable():
        raise ApiError(
            422, "invalid_field", f"a user id is 1 to {MAX_USER_ID} printable characters"
        )
    return user_id


def _limit(body: dict[str, Any], field: str) -> tuple[bool, int | None]:
    """(overridden, limit in pico-dollars): absent follows the server default, null is none."""
    if field not in body:
        return False, None
    value = body[field]
    if value is None:
        return True, None
    amount = parse_amount(value) if isinstance(value, int | float) else None
    if amount is None or amount > MAX_BUDGET_USD:
        raise ApiError(
            422,
            "invalid_field",
            f"`{field}` must be null or a USD amount from 0 to {MAX_BUDGET_USD:,}",
        )
    return True, to_picos(amount)


async def _override_body(request: Request, user_id: str) -> dict[str, Any]:
    state = app_state(request)
    row = await state.store.budgets.override(user_id=user_id)
    limits = await state.spend.limits_for(user_id)
    override: dict[str, Any] = {}
    if row is not None:
        for name, field in (("daily", "daily_usd"), ("monthly", "monthly_usd")):
            if row[f"{name}_overridden"]:
                override[field] = usd(from_picos(row[f"{name}_picousd"]))
    return {
        "user_id": user_id,
        "override": override if row is not None else None,
        "effective": {
            "daily_usd": usd(from_picos(limits.daily)),
            "monthly_usd": usd(from_picos(limits.monthly)),
        },
        "updated_at": row["updated_at"].isoformat() if row is not None else None,
    }


async def get_budget(request: Request) -> Response:
    """
    ---
    responses:
      200:
        description: the user's budget override
        content: {application/json: {schema: {type: object}}}
      403: forbidden admin_disabled
      422: invalid_field
    """
    await require_admin(request)
    return JSONResponse(await _override_body(request, _user_id(request)))


async def put_budget(request: Request) -> Response:
    """
    ---
    requestBody:
      required: true
      content: {application/json: {schema: {type: object}}}
    responses:
      200:
        description: the user's budget override, changed
        content: {application/json: {schema: {type: object}}}
      403: forbidden admin_disabled
      422: invalid_field
    """
    await require_admin(request)
    user_id = _user_id(request)
    body = await json_body(request)
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise ApiError(
            422, "invalid_field", f"unknown field(s) {', '.join(unknown)}; use {', '.join(FIELDS)}"
        )
    daily_overridden, daily = _limit(body, "daily_usd")
    monthly_overridden, monthly = _limit(body, "monthly_usd")
    await app_state(request).store.budgets.put_override(
        user_id=user_id,
        daily_overridden=daily_overridden,
        daily_picousd=daily,
        monthly_overridden=monthly_overridden,
        monthly_picousd=monthly,
    )
    return JSONResponse(await _override_body(request, user_id))


routes = [
    Route("/api/me/usage", my_usage, methods=["GET"]),
    Route("/api/admin/users/{user_id}/budget", get_budget, methods=["GET"]),
    Route("/api/admin/users/{user_id}/budget", put_budget, methods=["PUT"]),
]
