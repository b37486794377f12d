"""Errors of `/v1`, in OpenAI's shape: `{"error": {"message", "type", "code", "param"}}`.

The official SDKs map the status to an exception class (400 BadRequestError, 401
AuthenticationError, 403 PermissionDeniedError, 404 NotFoundError, 409 ConflictError, 422
UnprocessableEntityError, 429 RateLimitError, 5xx InternalServerError, any other
APIStatusError: our 402) and read `message`, `type`, `code` and `param` from the body. Our own
refusals are `ApiError`s, as everywhere in the app: the `/v1` routes turn them into this shape
(`openai_error`), keeping their status, headers (`Retry-After`) and code.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from app.errors import ApiError
from app.upstream.openrouter import UpstreamError, UpstreamStatusError, UpstreamTimeout

# OpenAI's `type` for each status (its API's own words where it has one).
TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
OTHER_TYPE = "server_error"  # any other status: 5xx


def invalid(message: str, *, param: str | None) -> ApiError:
    """A request OpenAI's API would refuse as it stands: 400 with the parameter named."""
    return ApiError(400, "invalid_value", message, details={"param": param})


def unknown_parameter(name: str) -> ApiError:
    """A field OpenAI's API does not take (or we do not pass on), in OpenAI's own words."""
    return ApiError(
        400,
        "unknown_parameter",
        f"Unrecognized request argument supplied: {name}",
        details={"param": name},
    )


def unprocessable(message: str, *, param: str | None) -> ApiError:
    """A well-formed field whose value is out of range (422, as the app's other routes)."""
    return ApiError(422, "invalid_value", message, details={"param": param})


def openai_error(error: ApiError) -> JSONResponse:
    param = (error.details or {}).get("param")
    return JSONResponse(
        {
            "error": {
                "message": error.message,
                "type": TYPES.get(error.status, OTHER_TYPE),
                "code": error.code,
                "param": param,
            }
        },
        status_code=error.status,
        headers=error.headers,
    )


def upstream_refusal(exc: UpstreamError) -> ApiError:
    """An OpenRouter error before any byte was relayed, as the caller's status.

    A caller's mistake keeps its status (400, 403 moderation, 404); OpenRouter rate limits and
    outages keep theirs with their `Retry-After` (429, 502, 503; 408 as 504). The platform's
    own key or credits failing (401, a 402 that is not the in-flight budget) is no fault of
    the caller's key and no budget of theirs: 502, said so."""
    if isinstance(exc, UpstreamStatusError):
        status = exc.status
    else:
        status = 504 if isinstance(exc, UpstreamTimeout) else 502
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after else None
    if status == 401 or exc.code == "insufficient_credits":
        return ApiError(
            502, "upstream_account_refused", "the platform's OpenRouter account refused the call"
        )
    if status == 402:  # the in-flight budget: clears by itself, as a rate limit does
        return ApiError(429, "upstream_rate_limited", exc.message, headers=headers)
    if status == 408:
        return ApiError(504, exc.code, exc.message)
    if status in (400, 403, 404, 429) or status >= 500:
        return ApiError(status, exc.code, exc.message, headers=headers)
    return ApiError(502, exc.code, exc.message, headers=headers)
