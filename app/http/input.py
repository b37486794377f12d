"""Reading a caller's input: JSON bodies, query strings, path ids, and the fields in them.

The one rule every value passes here, before anything is saved or sent upstream: text must be
storable and sendable. PostgreSQL refuses NUL in text, and a lone UTF-16 surrogate (JSON's
`"\\ud800"`, or UTF-8-encoded surrogate bytes, which `json.loads` lets through) cannot be
encoded as UTF-8 at all, neither for the database nor for OpenRouter. Checked once for the whole
body or query string, so a field added later is covered without anyone remembering to.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request

from app.errors import ApiError

# What `app.storage.store.new_id()` makes (uuid4().hex): anything else names nothing we stored.
ID_FORMAT = re.compile(r"[0-9a-f]{32}")
_UNSENDABLE = re.compile("[\x00\ud800-\udfff]")
# Printable ASCII, space included: what every HTTP client can send in a header as it is.
IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,200}")
# The code for each text field over MAX_MESSAGE_CHARS: spelled out, not built from the field's
# name, so docs/api.md's table of codes can be checked against the source.
TOO_LONG = {
    "message": "message_too_long",
    "context": "context_too_long",
    "question": "question_too_long",
}


class _BadNumber(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259), though Python's decoder accepts them by default.
    raise _BadNumber(f"{name} is not a JSON number")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        # Over 4,300 digits by default: Python's guard against quadratic-time conversion.
        raise _BadNumber(f"an integer of {len(text)} digits is more than it can read") from None


async def json_body(request: Request, *, optional: bool = False) -> dict[str, Any]:
    """The body, a JSON object; `optional`: no body at all reads as `{}` (a route that needs
    no field, such as regenerate)."""
    raw = await request.body()
    if optional and not raw:
        return {}
    try:
        body = json.loads(raw or b"null", parse_constant=_reject_constant, parse_int=_int)
    except _BadNumber as exc:
        raise ApiError(422, "invalid_field", f"the request body has a bad number: {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: nesting deeper than the decoder's stack, still just bad input.
        raise ApiError(400, "invalid_json", "the request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    _check_text(body)
    return body


def query_body(request: Request) -> dict[str, str]:
    """The query string as a body (the `EventSource` forms of the turn routes)."""
    params = dict(request.query_params)
    _check_text(params)
    return params


def _check_text(value: Any) -> None:
    """Every string in a decoded body, keys included, walked without recursion (the decoder
    allows nesting deeper than Python's stack would)."""
    pending: list[tuple[str, Any]] = [("", value)]
    while pending:
        where, item = pending.pop()
        if isinstance(item, str):
            _unsendable(item, f"`{where}`" if where else "the request body")
        elif isinstance(item, Mapping):
            for key, child in item.items():
                _unsendable(key, f"a key in `{where}`" if where else "a key of the request body")
                pending.append((f"{where}.{key}" if where else key, child))
        elif isinstance(item, list):
            pending.extend((f"{where}[{i}]", child) for i, child in enumerate(item))


def _unsendable(text: str, where: str) -> None:
    """Refuse text that could be neither stored nor sent: NUL, or a lone surrogate."""
    found = _UNSENDABLE.search(text)
    if found is not None:
        what = "NUL characters" if found.group() == "\x00" else "unpaired UTF-16 surrogates"
        raise ApiError(422, "invalid_field", f"{where} must not contain {what}")


def path_id(request: Request, name: str) -> str:
    """A path parameter that names a stored row; refused before any query when malformed."""
    return valid_id(request.path_params[name], name)


def valid_id(value: Any, name: str) -> str:
    if not isinstance(value, str) or not ID_FORMAT.fullmatch(value):
        raise ApiError(422, "invalid_field", f"`{name}` must be an id: 32 lowercase hex digits")
    return value


def optional_text(body: dict[str, Any], field: str, *, limit: int) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(422, "invalid_field", f"`{field}` must be a string")
    if len(value) > limit:
        raise ApiError(413, TOO_LONG[field], f"`{field}` is longer than {limit} characters")
    return value.strip() or None


def stream_flag(body: dict[str, Any]) -> bool:
    value = body.get("stream", True)
    if isinstance(value, str):  # query strings: ?stream=false
        value = {"true": True, "1": True, "false": False, "0": False}.get(value.lower(), value)
    if not isinstance(value, bool):
        raise ApiError(422, "invalid_field", "`stream` must be true or false")
    return value


def idempotency_key(request: Request) -> str | None:
    """The request's `Idempotency-Key`, if it sent one (see `app/storage/idempotency.py`)."""
    key = request.headers.get("idempotency-key")
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(
            422, "invalid_field", "`Idempotency-Key` must be 1 to 200 printable ASCII characters"
        )
    return key


def fingerprint(request: Request, body: dict[str, Any]) -> str:
    """What makes two requests with one idempotency key the same request: the path and the
    body as JSON values (so key order and spacing do not matter)."""
    canonical = json.dumps([request.url.path, body], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
