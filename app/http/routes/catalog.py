"""The agents' effective configs (file default merged with run-time overrides), each with its
model's prices and capabilities from the model catalog; and the admin writes that re-point them."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.agents.config import AgentConfig
from app.agents.models import allowed_models
from app.agents.overrides import allowed_json, check_against_catalog, parse_override
from app.errors import ApiError
from app.http.admin import require_admin
from app.http.input import json_body
from app.http.state import AppState, app_state
from app.upstream.models_catalog import CatalogView


def _config(agent: AgentConfig, default_model: str) -> dict[str, Any]:
    return {
        "model": agent.effective_model(default_model),
        "fallback_models": list(agent.fallback_models),
        "temperature": agent.temperature,
        "max_tokens": agent.max_tokens,
        "reasoning": None if agent.reasoning is None else agent.reasoning.upstream(),
        "allowed_models": allowed_json(agent.allowed_models),
        "prompt_caching": agent.prompt_caching,
    }


def _agent(state: AppState, name: str, view: CatalogView) -> dict[str, Any]:
    default_model = state.settings.default_model
    agent = state.agents.effective(name)
    override = state.agents.override(name)
    config = _config(agent, default_model)
    info = view.find(config["model"])
    warnings = []
    if not view.available:
        warnings.append("the model catalog is unavailable: prices and capabilities unknown")
    else:
        warnings += [
            f"{model_id} is not in OpenRouter's model catalog"
            for model_id in [config["model"], *config["fallback_models"]]
            if view.find(model_id) is None
        ]
        listed = allowed_models(agent, model=config["model"], catalog=view)
        warnings += [
            warning
            for entry in listed
            if not entry.default and (warning := entry.warning(view)) is not None
        ]
    thinks = agent.reasoning is not None and agent.reasoning.thinks
    if thinks and info is not None and "reasoning" not in info.capabilities:
        warnings.append(f"{info.id} does not take `reasoning`: the setting is not applied")
    model_info = None
    if info is not None and view.available:
        model_info = {
            key: value for key, value in info.to_json().items() if key not in ("id", "recommended")
        }
    return {
        **config,
        "history_messages": agent.history_messages,
        "source": "override" if override else "file",
        "override": override.to_json() if override else None,
        "file_default": _config(state.agents.defaults[name], default_model),
        "model_info": model_info,
        "warnings": warnings,
    }


async def catalog(request: Request) -> Response:
    """
    ---
    responses:
      200:
        description: each agent's effective configuration
        content: {application/json: {schema: {type: object}}}
    """
    state = app_state(request)
    view = await state.models.get()
    return JSONResponse(
        {
            "default_model": state.settings.default_model,
            "models_catalog": view.meta(),
            "agents": {name: _agent(state, name, view) for name in state.agents.names()},
        }
    )


def _agent_name(request: Request, state: AppState) -> str:
    name = request.path_params["agent"]
    if name not in state.agents:
        raise ApiError(404, "unknown_agent", f"no agent {name!r}")
    return name


async def put_agent(request: Request) -> Response:
    """
    ---
    requestBody:
      required: true
      content: {application/json: {schema: {type: object}}}
    responses:
      200:
        description: the agent's configuration, changed
        content: {application/json: {schema: {type: object}}}
      403: forbidden admin_disabled
      404: unknown_agent
      422: invalid_field unknown_model reasoning_not_supported max_tokens_too_large
    """
    state = app_state(request)
    await require_admin(request)
    name = _agent_name(request, state)
    override = parse_override(await json_body(request))
    view = await state.models.get()
    warnings = check_against_catalog(
        override,
        default=state.agents.defaults[name],
        default_model=state.settings.default_model,
        catalog=view,
    )
    await state.agents.put(state.store, name, override)
    await state.signals.agents_changed()
    return JSONResponse({"agent": name, **_agent(state, name, view), "warnings": warnings})


async def delete_agent(request: Request) -> Response:
    """
    ---
    responses:
      200:
        description: the agent's configuration, back to its file's
        content: {application/json: {schema: {type: object}}}
      403: forbidden admin_disabled
      404: unknown_agent
    """
    state = app_state(request)
    await require_admin(request)
    name = _agent_name(request, state)
    removed = await state.agents.reset(state.store, name)
    await state.signals.agents_changed()
    view = await state.models.get()
    return JSONResponse({"agent": name, "reset": removed, **_agent(state, name, view)})


routes = [
    Route("/api/catalog", catalog, methods=["GET"]),
    Route("/api/catalog/agents/{agent}", put_agent, methods=["PUT"]),
    Route("/api/catalog/agents/{agent}", delete_agent, methods=["DELETE"]),
]
