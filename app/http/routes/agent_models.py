"""`GET /api/agents/{agent}/models`: the models the caller may choose for an agent's turns (the
model picker's list), each priced, with what one turn on it may cost and whether their budgets
cover that."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.agents.models import AllowedModel, ModelChoice, allowed_models, choose
from app.billing.budgets import worst_case
from app.core.money import from_picos, usd
from app.errors import ApiError
from app.http.auth.identity import identify
from app.http.state import AppState, app_state
from app.replies.fitting import reply_allowance
from app.upstream.models_catalog import CatalogView, select_models


def largest_turn(state: AppState, choice: ModelChoice) -> int | None:
    """The most one turn on `choice` can reserve, in pico-dollars: the budget's bound
    (`worst_case`) for the longest prompt its window lets through (app/replies/fitting.py
    keeps every prompt's bound within the window less the reply), on the dearest model it may
    end on. None: a price or the window is not known."""
    if choice.context_length is None:
        return None
    prompt = max(0, choice.context_length - reply_allowance(choice.max_tokens, choice.reasoning))
    worst = 0
    for model_id in (choice.model, *choice.fallback_models):
        pricing = state.models.known_pricing(model_id)
        if pricing is None:
            return None
        worst = max(
            worst, worst_case(prompt_tokens=prompt, max_tokens=choice.max_tokens, pricing=pricing)
        )
    return worst


def _usd(picos: int) -> float | None:
    return usd(from_picos(picos))


def _entry(
    state: AppState,
    agent: str,
    allowed: AllowedModel,
    view: CatalogView,
    headroom: list[tuple[str, int, int]],
    every: list[AllowedModel],
) -> dict[str, Any]:
    if allowed.info is None:
        described: dict[str, Any] = {
            "id": allowed.id,
            "name": allowed.id,
            "context_length": None,
            "max_completion_tokens": None,
            "pricing": None,
            "capabilities": None,
            "recommended": allowed.id in state.models.recommended,
        }
    else:
        described = allowed.info.to_json()
    entry = {**described, "default": allowed.default, "warning": allowed.warning(view)}
    if not allowed.usable(view):
        # Listed, so the person sees what became of it; not to be chosen.
        return {
            **entry,
            "available": False,
            "max_tokens": None,
            "worst_case_usd": None,
            "affordable": False,
            "over_budget": None,
        }
    choice = choose(
        state.agents.effective(agent),
        default_model=state.settings.default_model,
        catalog=view,
        requested=allowed.id,
        allowed=every,
    )
    worst = largest_turn(state, choice)
    over = None
    if headroom and worst is None and _unpriced(state, choice):
        over = {"reason": "price_unknown"}  # a budget applies: such a turn is refused (409)
    elif headroom and worst is not None:
        short = [(scope, limit, left) for scope, limit, left in headroom if left < worst]
        if short:
            scope, limit, left = min(short, key=lambda item: item[2])
            over = {
                "reason": "budget",
                "scope": scope,
                "limit_usd": _usd(limit),
                "left_usd": _usd(max(left, 0)),
            }
    return {
        **entry,
        "available": True,
        "max_tokens": choice.max_tokens,
        "worst_case_usd": None if worst is None else _usd(worst),
        "affordable": over is None,
        "over_budget": over,
    }


def _unpriced(state: AppState, choice: ModelChoice) -> bool:
    return any(
        state.models.known_pricing(m) is None for m in (choice.model, *choice.fallback_models)
    )


async def agent_models(request: Request) -> Response:
    """The models the caller may choose for the agent's turns, recommended first, each with its
    prices, context, capabilities, the worst case of one turn and whether the caller's budgets
    cover it (docs/models.md).
    ---
    responses:
      200:
        description: the agent's default model and the models the caller may choose
        content:
          application/json:
            schema:
              type: object
              required: [agent, default_model, budgeted, models]
      404: unknown_agent
    """
    state = app_state(request)
    caller = await identify(request)
    agent = request.path_params["agent"]
    if agent not in state.agents:
        raise ApiError(404, "unknown_agent", f"no agent {agent!r}")
    view = await state.models.get()
    config = state.agents.effective(agent)
    default = config.effective_model(state.settings.default_model)
    allowed = allowed_models(config, model=default, catalog=view)
    listed = {entry.id: entry for entry in allowed}
    # Recommended first (in RECOMMENDED_MODELS' order), then by name; those that left the
    # catalog last.
    ordered = [
        listed[info.id]
        for info in select_models(
            (entry.info for entry in allowed if entry.info is not None),
            recommended=state.models.recommended,
        )
    ]
    ordered += [entry for entry in allowed if entry.info is None]
    headroom = await state.spend.headroom(caller.user_id)
    return JSONResponse(
        {
            "agent": agent,
            "default_model": default,
            "models_catalog": view.meta(),
            "budgeted": bool(headroom),
            "models": [_entry(state, agent, entry, view, headroom, allowed) for entry in ordered],
        }
    )


routes = [Route("/api/agents/{agent}/models", agent_models, methods=["GET"])]
