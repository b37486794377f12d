"""`POST /v1/chat/completions` and `GET /v1/models[/{id}]`: OpenAI's API for the host app's
jobs, called with a service key (app/jobs/, docs/jobs.md). Every refusal is in OpenAI's error
shape, so its SDKs raise their own exception for it."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.core.refusals import Refusal
from app.errors import ApiError
from app.http.auth.identity import bearer_token
from app.http.input import json_body
from app.http.refusals import refused
from app.http.state import app_state
from app.jobs.errors import openai_error
from app.jobs.keys import ServiceKey
from app.jobs.request import job_request
from app.jobs.service import Jobs

Handler = Callable[[Request], Awaitable[Response]]


def _openai_errors(handler: Handler) -> Handler:
    # `wraps`: the route keeps the handler's name and docstring, its OpenAPI operation.
    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as error:
            return openai_error(error)
        except Refusal as refusal:  # admission's limits and budgets, as chat's status and code
            return openai_error(refused(refusal))

    return wrapped


def _jobs(request: Request) -> Jobs:
    jobs = app_state(request).jobs
    assert jobs is not None  # built by every lifespan
    return jobs


async def chat_completions(request: Request) -> Response:
    """A chat completion on the platform's key, as OpenAI's API makes one (docs/jobs.md).
    ---
    parameters:
      - name: X-Job
        in: header
        description: the job's tag in the ledger (or `metadata.job`; both must agree)
        schema: {type: string, minLength: 1, maxLength: 100}
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            required: [model, messages]
            additionalProperties: false
            properties:
              model: {type: string, description: an OpenRouter model id the key allows}
              messages:
                type: array
                minItems: 1
                items:
                  type: object
                  required: [role]
                  properties:
                    role: {enum: [system, developer, user, assistant, tool]}
                    content: {type: [string, array, "null"]}
                    tool_calls: {type: array}
                    tool_call_id: {type: string}
              temperature: {type: [number, "null"], minimum: 0, maximum: 2}
              max_tokens: {type: [integer, "null"], minimum: 1}
              max_completion_tokens: {type: [integer, "null"], minimum: 1}
              stop:
                oneOf:
                  - {type: [string, "null"]}
                  - {type: array, maxItems: 4, items: {type: string}}
              response_format:
                type: [object, "null"]
                required: [type]
                properties:
                  type: {enum: [text, json_object, json_schema]}
                  json_schema: {type: object, required: [name]}
              tools:
                type: [array, "null"]
                items:
                  type: object
                  required: [type, function]
                  properties:
                    type: {const: function}
                    function: {type: object, required: [name]}
              tool_choice: {type: [string, object, "null"]}
              reasoning: {type: [object, "null"], description: OpenRouter's reasoning object}
              user: {type: [string, "null"], maxLength: 256}
              stream: {type: boolean, default: false}
              stream_options: {type: [object, "null"], description: taken, not sent}
              metadata:
                type: [object, "null"]
                properties: {job: {type: string, minLength: 1, maxLength: 100}}
    responses:
      200:
        description: >-
          OpenRouter's answer as it came (`id` the generation's, `usage.cost` the billed
          cost); streaming, its `data:` chunks as they came, then `data: [DONE]`
        content:
          application/json:
            schema:
              type: object
              required: [id, object, choices]
              properties:
                id: {type: string}
                object: {type: string, description: chat.completion}
                created: {type: integer}
                model: {type: string}
                choices: {type: array}
                usage:
                  type: object
                  properties:
                    prompt_tokens: {type: integer}
                    completion_tokens: {type: integer}
                    total_tokens: {type: integer}
                    cost: {type: number}
          text/event-stream:
            schema:
              type: object
              required: [data]
              properties:
                data:
                  type: string
                  description: >-
                    a `chat.completion.chunk` (JSON), or an error chunk; the last `[DONE]`
      400: invalid_value unknown_parameter
      402: budget_exceeded
      403: model_not_allowed
      404: model_not_found
      409: price_unknown
      422: invalid_value invalid_field
      429: rate_limited upstream_rate_limited
      502: upstream_account_refused
      503: storage_error
    x-openrouter-refusals: [400, 403, 404, 429, 5XX]
    """
    jobs = _jobs(request)
    key = await jobs.key(bearer_token(request))
    body = await json_body(request)
    call = job_request(body, header_job=request.headers.get("x-job"))
    job = await jobs.admit(key, call)
    if call.stream:
        return job  # type: ignore[return-value]  # an ASGI app: the relay of the stream
    return JSONResponse(await job.complete())


def _model(model_id: str) -> dict[str, object]:
    return {
        "id": model_id,
        "object": "model",
        "created": 0,
        "owned_by": model_id.split("/", 1)[0],
    }


async def _listed(request: Request) -> tuple[ServiceKey, list[str]]:
    jobs = _jobs(request)
    key = await jobs.key(bearer_token(request))
    view = await app_state(request).models.get()
    return key, [model.id for model in view.models if key.allows(model.id)]


async def list_models(request: Request) -> Response:
    """The models the key may use that OpenRouter lists.
    ---
    responses:
      200:
        description: the models, as OpenAI lists them
        content:
          application/json:
            schema:
              type: object
              required: [object, data]
              properties:
                object: {const: list}
                data: {type: array, items: {$ref: "#/components/schemas/OpenAIModel"}}
    x-schemas:
      OpenAIModel:
        type: object
        required: [id, object, created, owned_by]
        properties:
          id: {type: string}
          object: {const: model}
          created: {type: integer}
          owned_by: {type: string}
    """
    _, ids = await _listed(request)
    return JSONResponse({"object": "list", "data": [_model(model_id) for model_id in ids]})


async def get_model(request: Request) -> Response:
    """One model the key may use that OpenRouter lists.
    ---
    parameters:
      - name: model_id
        in: path
        required: true
        description: an OpenRouter model id as its catalog lists it, `/` included (openai/gpt-4o)
        schema: {type: string}
    responses:
      200:
        description: the model
        content:
          application/json:
            schema: {$ref: "#/components/schemas/OpenAIModel"}
      404: model_not_found
    """
    _, ids = await _listed(request)
    model_id = request.path_params["model_id"]
    if model_id not in ids:
        raise ApiError(
            404,
            "model_not_found",
            f"The model `{model_id}` does not exist or you do not have access to it.",
            details={"param": "model"},
        )
    return JSONResponse(_model(model_id))


routes = [
    Route("/v1/chat/completions", _openai_errors(chat_completions), methods=["POST"]),
    Route("/v1/models", _openai_errors(list_models), methods=["GET"]),
    Route("/v1/models/{model_id:path}", _openai_errors(get_model), methods=["GET"]),
]
