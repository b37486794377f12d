"""The agents' effective configs: which model each one uses, at what temperature."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.state import app_state


async def catalog(request: Request) -> Response:
    state = app_state(request)
    default_model = state.settings.default_model
    return JSONResponse(
        {
            "default_model": default_model,
            "agents": {
                name: {
                    "model": agent.effective_model(default_model),
                    "fallback_models": list(agent.fallback_models),
                    "temperature": agent.temperature,
                    "max_tokens": agent.max_tokens,
                    "history_messages": agent.history_messages,
                }
                for name, agent in state.agents.items()
            },
        }
    )


routes = [Route("/api/catalog", catalog, methods=["GET"])]
