"""`POST /v1/chat/completions` and `GET /v1/models[/{id}]`: OpenAI's API for the host app's
jobs, called with a service key (app/jobs/, docs/jobs.md). Every refusal is in OpenAI's error
shape, so its SDKs raise their own exception for it."""

from __future__ import annotations

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
    _, ids = await _listed(request)
    return JSONResponse({"object": "list", "data": [_model(model_id) for model_id in ids]})


async def get_model(request: Request) -> Response:
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
