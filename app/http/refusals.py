"""A refused turn as the caller sees it: each `Refusal` (app/core/refusals.py) its status, code
and headers. The one place admission's answers meet HTTP."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from app.core.refusals import (
    Busy,
    KeyReused,
    NotSaved,
    OverBudget,
    PriceUnknown,
    RateLimited,
    Refusal,
)
from app.errors import ApiError, api_error


def refused(refusal: Refusal) -> ApiError:
    message, details = refusal.message, refusal.details
    match refusal:
        case Busy():
            return ApiError(
                503,
                "server_busy",
                message,
                headers={"Retry-After": str(refusal.retry_after)},
            )
        case RateLimited():
            return ApiError(
                429,
                "rate_limited",
                message,
                headers={
                    "Retry-After": str(refusal.retry_after),
                    "RateLimit-Limit": str(refusal.limit),
                    "RateLimit-Remaining": str(refusal.remaining),
                    "RateLimit-Reset": str(refusal.retry_after),
                },
                details=details,
            )
        case OverBudget():
            return ApiError(402, "budget_exceeded", message, details=details)
        case PriceUnknown():
            return ApiError(409, "price_unknown", message, details=details)
        case KeyReused():
            return ApiError(409, "idempotency_key_reused", message, details=details)
        case NotSaved():
            return ApiError(503, "storage_error", message, details=details)
    raise TypeError(f"no answer for {type(refusal).__name__}")


async def refusal_response(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Refusal)
    return await api_error(request, refused(exc))
