"""`GET /openapi.json`: an OpenAPI 3.1 document of every route, generated from the routes.

Starlette's `SchemaGenerator` walks the app's routes and reads each endpoint's docstring, the
YAML after its `---`, so an operation is described where it is written and a route cannot be
left out (tests/http/test_openapi.py fails on one that is). What the YAML may say beyond
OpenAPI's own form, filled in here so each route says only what is its own:

    responses:
      200: the conversation            # a description
      404: conversation_not_found      # an error: the codes it may carry (docs/api.md's table)
      422: invalid_field invalid_query

- an error response (4xx, 5xx) written as codes becomes `{"error": {"code", "message"}}`
  (the schema `Error`) whose `code` is one of them, listed again in `x-error-codes`;
- `/v1/` routes are OpenAI's API (app/http/routes/jobs.py): the errors their handlers raise
  are in OpenAI's shape instead, `{"error": {"message", "type", "code", "param"}}`
  (app/jobs/errors.py), the schema `OpenAIError`, its `code` narrowed the same way;
- every route gets the errors any route can answer, raised around its handler and so in our
  shape (405 method_not_allowed, 503 database_unavailable where it needs the database);
  `/api/` routes the identity errors (401, 503 auth_unavailable), `/v1/` routes a service
  key's (401 invalid_api_key); a route with a body 400 invalid_json and 413 body_too_large
  (in our shape too when the middleware answers a declared Content-Length);
- `x-openrouter-refusals: [400, 429, 5XX]`: the statuses at which a route passes an
  OpenRouter refusal on with OpenRouter's own code (not one of ours: `code` is any string
  there; `5XX` covers every 5xx of the route);
- `x-schemas: {Name: schema}`: schemas an operation names, for others to `$ref` (in
  `components`);
- path parameters are declared from the path (ids as 32 hex digits), unless the YAML does;
- a `text/event-stream` answer's schema, unless the YAML gives one, is that of one event of a
  reply's stream (`SSE_EVENT`).
"""

from __future__ import annotations

import inspect
import re
from enum import StrEnum
from typing import Any

import yaml
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.schemas import SchemaGenerator

from app.jobs.errors import OTHER_TYPE, TYPES
from app.replies.wire import Event

INFO = {
    "title": "streamchat",
    "version": "1",
    "description": "A streaming chat and coach server: replies over Server-Sent Events, "
    "conversations, costs and budgets. Errors before a stream starts are "
    '`{"error": {"code", "message"}}` (docs/api.md: Error codes).',
}

# Routes that answer without the database.
NO_DATABASE = {
    *("/", "/openapi.json", "/admin/costs", "/metrics", "/shared/{token}"),
    *("/api/me", "/api/catalog", "/api/models", "/api/admin/stages"),
}
# `/api/` routes anyone may call under AUTH_MODE=jwt (docs/api.md: Endpoints).
PUBLIC_API = {"/api/catalog", "/api/models", "/api/shared/{token}"}
IDENTITY = {
    "401": "unauthorized invalid_token token_expired",
    "503": "auth_unavailable",
}
# OpenAI's API, called with a service key (app/http/routes/jobs.py).
OPENAI_API = "/v1/"
SERVICE_KEY = {"401": "invalid_api_key"}
WITH_BODY = {"400": "invalid_json", "413": "body_too_large"}


class Shape(StrEnum):
    """An error body's shape: the schema's name in `components`."""

    OURS = "Error"  # app/errors.py
    OPENAI = "OpenAIError"  # app/jobs/errors.py


SHAPES = {
    Shape.OURS: {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    Shape.OPENAI: {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "code", "param"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"enum": sorted({*TYPES.values(), OTHER_TYPE})},
                    "code": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                },
            }
        },
    },
}
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


class Errors:
    """An operation's error responses as they are gathered: status -> shape -> codes."""

    def __init__(self) -> None:
        self.codes: dict[str, dict[Shape, list[str]]] = {}
        self.passed_on: set[str] = set()  # statuses that also carry OpenRouter's codes

    def add(self, status: str, shape: Shape, codes: str) -> None:
        have = self.codes.setdefault(status, {}).setdefault(shape, [])
        have.extend(code for code in codes.split() if code not in have)

    def pass_on(self, statuses: list[Any]) -> None:
        """OpenRouter's refusals, in OpenAI's shape with its code, at `statuses`."""
        for status in map(str, statuses):
            self.codes.setdefault(status, {}).setdefault(Shape.OPENAI, [])
            self.passed_on.add(status)

    def responses(self) -> dict[str, Any]:
        out = {}
        for status, shapes in self.codes.items():
            passed_on = status in self.passed_on or (
                status.startswith("5") and "5XX" in self.passed_on
            )
            if passed_on:
                shapes = {**shapes, Shape.OPENAI: shapes.get(Shape.OPENAI, [])}
            codes = [code for have in shapes.values() for code in have]
            schemas = [
                _narrowed(shape, None if passed_on and shape == Shape.OPENAI else have)
                for shape, have in shapes.items()
            ]
            described = [f"`{code}`" for code in codes]
            if passed_on:
                described.append("OpenRouter's refusal, with its status and code")
            out[status] = {
                "description": ", ".join(described),
                "content": {
                    "application/json": {
                        "schema": schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
                    }
                },
            }
            if codes:
                out[status]["x-error-codes"] = codes
        return out


def _narrowed(shape: Shape, codes: list[str] | None) -> dict[str, Any]:
    """The shape's schema, its `code` one of `codes` (None: any string)."""
    ref = {"$ref": f"#/components/schemas/{shape}"}
    if codes is None:
        return ref
    code = {"properties": {"error": {"properties": {"code": {"enum": codes}}}}}
    return {"allOf": [ref, code]}


def _is_codes(status: str, value: Any) -> bool:
    return isinstance(value, str) and status[0] in "45" and bool(_CODE.match(value))


class Document(SchemaGenerator):
    def __init__(self) -> None:
        super().__init__({"openapi": "3.1.0", "info": INFO})

    def get_schema(self, routes: list[BaseRoute]) -> dict[str, Any]:
        schemas: dict[str, Any] = {str(shape): schema for shape, schema in SHAPES.items()}
        schema: dict[str, Any] = {**self.base_schema, "paths": {}}
        for endpoint in self.get_endpoints(routes):
            operation = self.operation(endpoint.path, endpoint.http_method, endpoint.func)
            for name, named in operation.pop("x-schemas", {}).items():
                if schemas.setdefault(name, named) != named:
                    raise ValueError(f"two schemas named {name} ({endpoint.path})")
            schema["paths"].setdefault(endpoint.path, {})[endpoint.http_method] = operation
        schema["components"] = {"schemas": dict(sorted(schemas.items()))}
        return schema

    def operation(self, path: str, method: str, func: Any) -> dict[str, Any]:
        doc = inspect.getdoc(func) or ""
        prose, _, spec = f"\n{doc}".partition("\n---\n")
        operation: dict[str, Any] = yaml.safe_load(spec) if spec else {}
        if not isinstance(operation, dict):
            raise ValueError(f"the OpenAPI YAML of {method.upper()} {path} is not a mapping")
        summary = prose.strip().split("\n\n")[0].replace("\n", " ")
        operation.setdefault("summary", summary[:120] or f"{method.upper()} {path}")
        # The errors its handler raises: in OpenAI's shape on OpenAI's API, else in ours.
        shape = Shape.OPENAI if path.startswith(OPENAI_API) else Shape.OURS
        responses: dict[str, Any] = {}
        errors = Errors()
        for status, value in (operation.get("responses") or {"200": "OK"}).items():
            status = str(status)
            if _is_codes(status, value):
                errors.add(status, shape, value)
            else:
                responses[status] = {"description": value} if isinstance(value, str) else value
        errors.pass_on(operation.pop("x-openrouter-refusals", []))
        if "requestBody" in operation:
            for status, codes in WITH_BODY.items():
                errors.add(status, shape, codes)
            # A declared Content-Length over the limit: the middleware answers, in our shape.
            errors.add("413", Shape.OURS, WITH_BODY["413"])
        if path.startswith("/api/") and path not in PUBLIC_API:
            for status, codes in IDENTITY.items():
                errors.add(status, Shape.OURS, codes)
        if path.startswith(OPENAI_API):
            for status, codes in SERVICE_KEY.items():
                errors.add(status, Shape.OPENAI, codes)
        # Raised around the handler (the database's exception handler, the router): ours.
        if path not in NO_DATABASE:
            errors.add("503", Shape.OURS, "database_unavailable")
        errors.add("405", Shape.OURS, "method_not_allowed")
        responses.update(errors.responses())
        for response in responses.values():
            stream = response.get("content", {}).get("text/event-stream")
            if stream is not None:
                stream.setdefault("schema", SSE_EVENT)
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
