"""`GET /openapi.json`: an OpenAPI 3.1 document of every route, generated from the routes.

Starlette's `SchemaGenerator` walks the app's routes and reads each endpoint's docstring, the
YAML after its `---`, so an operation is described where it is written and a route cannot be
left out (tests/http/test_openapi.py fails on one that is). What the YAML may say beyond
OpenAPI's own form, filled in here so each route says only what is its own:

    responses:
      200: the conversation            # a description
      404: conversation_not_found      # an error: the codes it may carry (README's table)
      422: invalid_field invalid_query

- an error response (4xx, 5xx) written as codes becomes `{"error": {"code", "message"}}`
  whose `code` is one of them, listed again in `x-error-codes`;
- every route gets the errors any route can answer (405 method_not_allowed, 503
  database_unavailable where it needs the database); `/api/` routes the identity errors (401,
  503 auth_unavailable); a route with a body 400 invalid_json and 413 body_too_large;
- path parameters are declared from the path (ids as 32 hex digits), unless the YAML does;
- a `text/event-stream` answer's schema is that of one event (`SSE_EVENT`).
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import yaml
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.schemas import SchemaGenerator

from app.replies.wire import Event

INFO = {
    "title": "streamchat",
    "version": "1",
    "description": "A streaming chat and coach server: replies over Server-Sent Events, "
    "conversations, costs and budgets. Errors before a stream starts are "
    '`{"error": {"code", "message"}}` (README: Error codes).',
}

# Routes that answer without the database.
NO_DATABASE = {
    *("/", "/openapi.json", "/admin/costs", "/metrics"),
    *("/api/me", "/api/catalog", "/api/models", "/api/admin/stages"),
}
# `/api/` routes anyone may call under AUTH_MODE=jwt (README: Endpoints).
PUBLIC_API = {"/api/catalog", "/api/models"}
IDENTITY = {
    "401": "unauthorized invalid_token token_expired",
    "503": "auth_unavailable",
}
WITH_BODY = {"400": "invalid_json", "413": "body_too_large"}
# One event of a reply's stream (app/replies/wire.py), as every `text/event-stream` answer's
# schema: a tester reads the stream and checks each event against it.
SSE_EVENT = {
    "type": "object",
    "required": ["event", "data", "id"],
    "properties": {
        "event": {"enum": [event.value for event in Event]},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string", "pattern": "^[0-9a-f]{32}:[0-9]+$|^[0-9]+$"},
        "retry": {"type": "integer"},
    },
}
_CODE = re.compile(r"^[a-z_]+( [a-z_]+)*$")


def _path_schema(name: str) -> dict[str, Any]:
    """Our ids are 32 lowercase hex digits (app/http/input.py `valid_id`); a user id or an
    agent's name is any text."""
    if name.endswith("_id") and name != "user_id":
        return {"type": "string", "pattern": "^[0-9a-f]{32}$"}
    return {"type": "string"}


def _error(codes: list[str]) -> dict[str, Any]:
    return {
        "description": ", ".join(f"`{code}`" for code in codes),
        "x-error-codes": codes,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string", "enum": codes},
                                "message": {"type": "string"},
                            },
                        }
                    },
                }
            }
        },
    }


def _merge(responses: dict[str, Any], status: str, codes: str) -> None:
    """Add `codes` to the error response `status` (made if absent)."""
    have = responses.get(status, {}).get("x-error-codes", [])
    responses[status] = _error([*have, *(c for c in codes.split() if c not in have)])


def _responses(raw: dict[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status, value in raw.items():
        status = str(status)
        if isinstance(value, str) and status[0] in "45" and _CODE.match(value):
            _merge(out, status, value)
        elif isinstance(value, str):
            out[status] = {"description": value}
        else:
            out[status] = value
    return out


class Document(SchemaGenerator):
    def __init__(self) -> None:
        super().__init__({"openapi": "3.1.0", "info": INFO})

    def get_schema(self, routes: list[BaseRoute]) -> dict[str, Any]:
        schema: dict[str, Any] = {**self.base_schema, "paths": {}}
        for endpoint in self.get_endpoints(routes):
            operation = self.operation(endpoint.path, endpoint.http_method, endpoint.func)
            schema["paths"].setdefault(endpoint.path, {})[endpoint.http_method] = operation
        return schema

    def operation(self, path: str, method: str, func: Any) -> dict[str, Any]:
        doc = inspect.getdoc(func) or ""
        prose, _, spec = f"\n{doc}".partition("\n---\n")
        operation: dict[str, Any] = yaml.safe_load(spec) if spec else {}
        if not isinstance(operation, dict):
            raise ValueError(f"the OpenAPI YAML of {method.upper()} {path} is not a mapping")
        summary = prose.strip().split("\n\n")[0].replace("\n", " ")
        operation.setdefault("summary", summary[:120] or f"{method.upper()} {path}")
        responses = _responses(operation.get("responses") or {"200": "OK"})
        if "requestBody" in operation:
            for status, codes in WITH_BODY.items():
                _merge(responses, status, codes)
        if path.startswith("/api/") and path not in PUBLIC_API:
            for status, codes in IDENTITY.items():
                _merge(responses, status, codes)
        if path not in NO_DATABASE:
            _merge(responses, "503", "database_unavailable")
        _merge(responses, "405", "method_not_allowed")
        for response in responses.values():
            if "text/event-stream" in response.get("content", {}):
                response["content"]["text/event-stream"] = {"schema": SSE_EVENT}
        operation["responses"] = dict(sorted(responses.items()))
        declared = {p["name"] for p in operation.get("parameters", []) if p.get("in") == "path"}
        path_params = [
            {"name": name, "in": "path", "required": True, "schema": _path_schema(name)}
            for name in re.findall(r"{(\w+)}", path)
            if name not in declared
        ]
        if path_params:
            operation["parameters"] = [*path_params, *operation.get("parameters", [])]
        return operation


def document(routes: list[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI document of `routes` (the app's, `openapi.json` itself included)."""
    return Document().get_schema(routes)


async def openapi(request: Request) -> Response:
    """This document: every route, its parameters, bodies and answers, errors by code.
    ---
    responses:
      200:
        description: the OpenAPI 3.1 document
        content: {application/json: {schema: {type: object}}}
    """
    app = request.app
    cached = getattr(app.state, "openapi", None)
    if cached is None:
        cached = app.state.openapi = document(app.routes)
    return JSONResponse(cached)


routes = [Route("/openapi.json", openapi, methods=["GET"])]
