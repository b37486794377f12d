"""Service keys for admins: `POST /api/admin/keys` (the key, shown once), `GET` (the list,
never a key), `DELETE /api/admin/keys/{id}` (revoked at once, on every process)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.core.model_id import check_model_id
from app.core.money import from_picos, parse_amount, to_picos, usd
from app.errors import ApiError
from app.http.admin import require_admin
from app.http.input import json_body, valid_id
from app.http.state import app_state
from app.jobs.keys import ANY_MODEL, ServiceKey

FIELDS = ("label", "models", "daily_usd", "monthly_usd", "rpm", "concurrency", "store_content")
MAX_LABEL = 100
MAX_MODELS = 100


def _invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_field", message)


def _label(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_LABEL:
        raise _invalid(f"`label` is required: 1 to {MAX_LABEL} characters")
    if not value.isprintable():
        raise _invalid("`label` must be printable")
    return value.strip()


def _models(value: Any) -> tuple[str, ...] | None:
    if value == ANY_MODEL:
        return None
    if not isinstance(value, list) or not value or len(value) > MAX_MODELS:
        raise _invalid(f'`models` is required: "{ANY_MODEL}", or a list of 1 to {MAX_MODELS} ids')
    models = []
    for item in value:
        try:
            models.append(check_model_id(item) if isinstance(item, str) else check_model_id(""))
        except ValueError as exc:
            raise _invalid(f"`models`: each {exc}") from None
    return tuple(dict.fromkeys(models))


def _budget(body: dict[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    amount = (
        parse_amount(value)
        if isinstance(value, int | float) and not isinstance(value, bool)
        else None
    )
    if amount is None or amount > Decimal(10**6):
        raise _invalid(f"`{field}` must be null or a USD amount from 0 to 1,000,000")
    return to_picos(amount)


def _count(body: dict[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
        raise _invalid(f"`{field}` must be null or an integer from 1 to 1,000,000")
    return value


def key_json(key: ServiceKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "label": key.label,
        "hint": key.hint + "…",
        "models": ANY_MODEL if key.models is None else list(key.models),
        "daily_usd": usd(from_picos(key.daily_picousd)),
        "monthly_usd": usd(from_picos(key.monthly_picousd)),
        "rpm": key.rpm,
        "concurrency": key.concurrency,
        "store_content": key.store_content,
        "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


async def create_key(request: Request) -> Response:
    """A service key for `/v1` (docs/jobs.md): shown this once, only its hash kept.
    ---
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            required: [label, models]
            additionalProperties: false
            properties:
              label: {type: string, minLength: 1, maxLength: 100}
              models:
                description: '"*" (any model) or OpenRouter model ids'
                oneOf:
                  - {const: "*"}
                  - {type: array, minItems: 1, maxItems: 100, items: {type: string}}
              daily_usd: {type: [number, "null"], minimum: 0, maximum: 1000000}
              monthly_usd: {type: [number, "null"], minimum: 0, maximum: 1000000}
              rpm: {type: [integer, "null"], minimum: 1, maximum: 1000000}
              concurrency: {type: [integer, "null"], minimum: 1, maximum: 1000000}
              store_content: {type: boolean, default: false}
    responses:
      201:
        description: the key, with `key` (`sc-…`) this once
        headers:
          Cache-Control: {schema: {const: no-store}}
        content:
          application/json:
            schema:
              allOf:
                - {$ref: "#/components/schemas/ServiceKey"}
                - {required: [key], properties: {key: {type: string, pattern: "^sc-"}}}
      403: forbidden admin_disabled
      422: invalid_field
    x-schemas:
      ServiceKey:
        type: object
        required: [id, label, hint, models, daily_usd, monthly_usd, rpm, concurrency,
                   store_content, created_at, revoked_at]
        properties:
          id: {type: string, pattern: "^[0-9a-f]{32}$"}
          label: {type: string}
          hint: {type: string, description: the key's first characters}
          models: {oneOf: [{const: "*"}, {type: array, items: {type: string}}]}
          daily_usd: {type: [number, "null"]}
          monthly_usd: {type: [number, "null"]}
          rpm: {type: [integer, "null"]}
          concurrency: {type: [integer, "null"]}
          store_content: {type: boolean}
          created_at: {type: string, description: ISO 8601}
          revoked_at: {type: [string, "null"], description: ISO 8601}
    """
    await require_admin(request)
    body = await json_body(request)
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise _invalid(f"unknown field(s) {', '.join(unknown)}; use {', '.join(FIELDS)}")
    store_content = body.get("store_content", False)
    if not isinstance(store_content, bool):
        raise _invalid("`store_content` must be true or false")
    jobs = app_state(request).jobs
    assert jobs is not None
    key, token = await jobs.keys.create(
        label=_label(body.get("label")),
        models=_models(body.get("models")),
        daily_picousd=_budget(body, "daily_usd"),
        monthly_picousd=_budget(body, "monthly_usd"),
        rpm=_count(body, "rpm"),
        concurrency=_count(body, "concurrency"),
        store_content=store_content,
    )
    # The one time the key is shown: only its hash is kept.
    return JSONResponse(
        {**key_json(key), "key": token}, status_code=201, headers={"Cache-Control": "no-store"}
    )


async def list_keys(request: Request) -> Response:
    """Every service key, revoked ones too; never a key itself.
    ---
    responses:
      200:
        description: the keys, oldest first
        content:
          application/json:
            schema:
              type: object
              required: [keys]
              properties:
                keys: {type: array, items: {$ref: "#/components/schemas/ServiceKey"}}
      403: forbidden admin_disabled
    """
    await require_admin(request)
    jobs = app_state(request).jobs
    assert jobs is not None
    return JSONResponse({"keys": [key_json(key) for key in await jobs.keys.list()]})


async def revoke_key(request: Request) -> Response:
    """Revoke a service key: refused at once by every process (a second revoke keeps the first
    time).
    ---
    responses:
      200:
        description: the key, revoked
        content:
          application/json:
            schema: {$ref: "#/components/schemas/ServiceKey"}
      403: forbidden admin_disabled
      404: key_not_found
      422: invalid_field
    """
    await require_admin(request)
    key_id = request.path_params["key_id"]
    valid_id(key_id, "key_id")
    jobs = app_state(request).jobs
    assert jobs is not None
    key = await jobs.keys.revoke(key_id=key_id)
    if key is None:
        raise ApiError(404, "key_not_found", f"no service key {key_id!r}")
    return JSONResponse(key_json(key))


routes = [
    Route("/api/admin/keys", create_key, methods=["POST"]),
    Route("/api/admin/keys", list_keys, methods=["GET"]),
    Route("/api/admin/keys/{key_id}", revoke_key, methods=["DELETE"]),
]
