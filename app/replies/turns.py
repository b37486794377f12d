"""Turning a caller's input into a run: validation, the conversation, the upstream prompt.

Shared by the chat and coach routes and by their one-step (`POST /api/chat`) and two-step
(`POST /api/chat/messages`) forms, so every entry point validates the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from app.errors import ApiError
from app.http.input import optional_text, stream_flag, valid_id
from app.replies.runs import Run, RunRequest
from app.state import AppState
from app.storage.replies import TurnIds

log = logging.getLogger(__name__)
TITLE_CHARS = 80


@dataclass(frozen=True)
class Turn:
    user_id: str  # the caller's: the owner of the conversation the turn opens or continues
    agent: str
    user_content: str
    conversation_id: str | None
    prompt: list[dict[str, Any]]  # what precedes the user message: system prompt, history
    subject_conversation_id: str | None = None
    stream: bool = True


async def _existing_conversation(
    state: AppState, conversation_id: Any, *, agent: str, user_id: str
) -> str:
    """The id of the user's own conversation of `agent` (admins included: a turn never goes
    into, and the coach never reviews, another user's conversation)."""
    valid_id(conversation_id, "conversation_id")
    conversation = await state.store.conversations.get(
        conversation_id=conversation_id, user_id=user_id
    )
    if conversation is None or conversation["agent"] != agent:
        raise ApiError(
            404, "conversation_not_found", f"no {agent} conversation {conversation_id!r}"
        )
    return conversation_id


async def chat_turn(state: AppState, body: dict[str, Any], *, user_id: str) -> Turn:
    limit = state.settings.max_message_chars
    message = optional_text(body, "message", limit=limit)
    if message is None:
        raise ApiError(422, "message_required", "`message` is required and must not be empty")
    agent = state.agents.effective("chat")
    conversation_id = None
    history: list[dict[str, Any]] = []
    if body.get("conversation_id") is not None:
        conversation_id = await _existing_conversation(
            state, body["conversation_id"], agent="chat", user_id=user_id
        )
        history = await state.store.replies.history(
            conversation_id=conversation_id, limit=agent.history_messages
        )
    return Turn(
        user_id=user_id,
        agent="chat",
        user_content=message,
        conversation_id=conversation_id,
        prompt=[{"role": "system", "content": agent.system_prompt}, *history],
        stream=stream_flag(body),
    )


async def coach_turn(state: AppState, body: dict[str, Any], *, user_id: str) -> Turn:
    limit = state.settings.max_message_chars
    context = optional_text(body, "context", limit=limit)
    question = optional_text(body, "question", limit=limit)
    subject = None
    transcript: list[dict[str, Any]] = []
    agent = state.agents.effective("coach")
    if body.get("conversation_id") is not None:
        subject = await _existing_conversation(
            state, body["conversation_id"], agent="chat", user_id=user_id
        )
        transcript = await state.store.replies.history(
            conversation_id=subject, limit=agent.history_messages
        )
    if context is None and question is None and subject is None:
        raise ApiError(
            422,
            "coach_input_required",
            "give at least one of `context`, `question`, `conversation_id`",
        )
    sections = []
    if transcript:
        lines = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in transcript)
        sections.append(f"Conversation to review:\n{lines}")
    if context:
        sections.append(f"Context:\n{context}")
    sections.append(f"Question:\n{question}" if question else "What advice do you have?")
    return Turn(
        user_id=user_id,
        agent="coach",
        user_content="\n\n".join(sections),
        conversation_id=None,  # each coach call is its own conversation
        prompt=[{"role": "system", "content": agent.system_prompt}],
        subject_conversation_id=subject,
        stream=stream_flag(body),
    )


def _prepare(state: AppState, turn: Turn) -> tuple[RunRequest, dict[str, Any]]:
    """The run's request and the arguments of `Replies.start_turn` for its rows."""
    # Resolved once here and copied into the run: a later change never reaches a reply in flight.
    agent = state.agents.effective(turn.agent)
    model = agent.effective_model(state.settings.default_model)
    ids = TurnIds.allocate(turn.conversation_id)
    rows = {
        "ids": ids,
        "user_id": turn.user_id,
        "agent": turn.agent,
        "title": " ".join(turn.user_content.split())[:TITLE_CHARS],
        "user_content": turn.user_content,
        "requested_model": model,
        "temperature": agent.temperature,
        "subject_conversation_id": turn.subject_conversation_id,
    }
    request = RunRequest(
        message_id=ids.message_id,
        conversation_id=ids.conversation_id,
        user_message_id=ids.user_message_id,
        user_id=turn.user_id,
        agent=turn.agent,
        model=model,
        fallback_models=agent.fallback_models,
        temperature=agent.temperature,
        max_tokens=agent.max_tokens,
        messages=[*turn.prompt, {"role": "user", "content": turn.user_content}],
        stream=turn.stream,
        reasoning=None if agent.reasoning is None else agent.reasoning.upstream(),
    )
    return request, rows


def start_run(state: AppState, turn: Turn) -> Run:
    """Start the reply's run; the user message is saved while the upstream call starts."""
    request, rows = _prepare(state, turn)
    return state.runs.start(request, save_turn=state.store.replies.start_turn(**rows))


async def claim_run(
    state: AppState, turn: Turn, *, key: str, fingerprint: str
) -> Run | dict[str, Any]:
    """Start the run of a turn sent with an `Idempotency-Key`, unless the key was used already:
    then the key's row (its turn's ids, and the `fingerprint` of the request that used it).

    Unlike `start_run`, the turn's rows are saved before the upstream call starts, in one
    transaction with the key's (see `app/storage/idempotency.py`): a request that loses the
    race for the key must not have called upstream. One write's wait, for keyed turns only.
    """
    request, rows = _prepare(state, turn)
    ids = rows["ids"]
    claim = state.store.idempotency.claim(
        user_id=turn.user_id,
        key=key,
        fingerprint=fingerprint,
        conversation_id=ids.conversation_id,
        user_message_id=ids.user_message_id,
        message_id=ids.message_id,
    )
    try:
        await state.store.replies.start_turn(**rows, claim=claim)
    except Exception as failed:
        # The key's primary key refused it (the backends say so in different exceptions), or
        # the database failed: the key's row tells which.
        try:
            claimed = await state.store.idempotency.get(user_id=turn.user_id, key=key)
        except Exception:
            claimed = None
        if claimed is None:
            log.error("could not save a keyed turn", exc_info=failed)
            raise ApiError(503, "storage_error", "the conversation could not be saved") from None
        return claimed
    return state.runs.start(request, save_turn=None)
