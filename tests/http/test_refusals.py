"""Each refusal as the caller sees it (app/http/refusals.py): the status, code, headers and
body the routes answered with before admission was one service, byte for byte."""

from __future__ import annotations

import asyncio
import json

import pytest

from app.core.refusals import (
    Busy,
    KeyReused,
    NotSaved,
    OverBudget,
    PriceUnknown,
    RateLimited,
    Refusal,
)
from app.http.refusals import refusal_response


def _answer(refusal: Refusal) -> tuple[int, dict[str, str], dict]:
    response = asyncio.run(refusal_response(None, refusal))  # type: ignore[arg-type]
    headers = {k: v for k, v in response.headers.items() if k not in ("content-length",)}
    return response.status_code, headers, json.loads(response.body)


def test_a_full_process_is_503_with_retry_after() -> None:
    status, headers, body = _answer(Busy("full", retry_after=5))
    assert status == 503 and headers["retry-after"] == "5"
    assert body == {"error": {"code": "server_busy", "message": "full"}}


def test_a_rate_limit_carries_its_window_in_headers_and_which_limit_in_the_body() -> None:
    refusal = RateLimited(
        "too many", limit=3, remaining=0, retry_after=7, details={"limit": "requests_per_minute"}
    )
    status, headers, body = _answer(refusal)
    assert status == 429
    assert {k: headers[k] for k in headers if k.startswith(("retry", "ratelimit"))} == {
        "retry-after": "7",
        "ratelimit-limit": "3",
        "ratelimit-remaining": "0",
        "ratelimit-reset": "7",
    }
    # Details first, then code and message: the order clients have always seen.
    assert list(body["error"]) == ["limit", "code", "message"]


@pytest.mark.parametrize(
    ("refusal", "status", "code"),
    [
        (OverBudget("over", details={"scope": "daily"}), 402, "budget_exceeded"),
        (PriceUnknown("unpriced", details={"model": "a/b"}), 409, "price_unknown"),
        (KeyReused("again"), 409, "idempotency_key_reused"),
        (NotSaved("lost"), 503, "storage_error"),
    ],
)
def test_the_other_refusals(refusal: Refusal, status: int, code: str) -> None:
    answered, _, body = _answer(refusal)
    assert answered == status
    assert body["error"] == {**(refusal.details or {}), "code": code, "message": refusal.message}
