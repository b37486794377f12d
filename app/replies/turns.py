"""Turning a caller's input into a run: validation, the conversation, the upstream prompt.

Shared by the chat and coach routes and by their one-step (`POST /api/chat`) and two-step
(`POST /api/chat/messages`) forms, so every entry point validates the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.errors import ApiError
from app.http.input import optional_text, stream_flag, valid_id
from app.replies.runs import Run, RunRequest
from app.state import AppState
from app.storage.replies import TurnIds

TITLE_CHARS = 80


@dataclass(frozen=True)
class Turn:
    agent: str
    user_content: str
    conversation_id: str | None
    prompt: list[dict[str, str]]  # what precedes the user message: system prompt, history
    subject_conversation_id: str | None = None
    stream: bool = True


async def _existing_conversation(state: AppState, conversation_id: Any, *, agent: str) -> str:
    valid_id(conversation_id, "conversation_id")
    conversation = await state.store.conversations.get(
        conversation_id=conversation_id, user_id=state.settings.dev_user_id
    )
    if conversation is None or conversation["agent"] != agent:
        raise ApiError(
            404, "conversation_not_found", f"no {agent} conversation {conversation_id!r}"
        )
    return conversation_id


async def chat_turn(state: AppState, body: dict[str, Any]) -> Turn:
    limit = state.settings.max_message_chars
    message = optional_text(body, "message", limit=limit)
    if message is None:
        raise ApiError(422, "message_required", "`message` is required and must not be empty")
    agent = state.agents.effective("chat")
    conversation_id = None
    history: list[dict[str, str]] = []
    if body.get("conversation_id") is not None:
        conversation_id = await _existing_conversation(state, body["conversation_id"], agent="chat")
        history = await state.store.replies.history(
            conversation_id=conversation_id, limit=agent.history_messages
        )
    return Turn(
        agent="chat",
        user_content=message,
        conversation_id=conversation_id,
        prompt=[{"role": "system", "content": agent.system_prompt}, *history],
        stream=stream_flag(body),
    )


async def coach_turn(state: AppState, body: dict[str, Any]) -> Turn:
    limit = state.settings.max_message_chars
    context = optional_text(body, "context", limit=limit)
    question = optional_text(body, "question", limit=limit)
    subject = None
    transcript: list[dict[str, str]] = []
    agent = state.agents.effective("coach")
    if body.get("conversation_id") is not None:
        subject = await _existing_conversation(state, body["conversation_id"], agent="chat")
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
        agent="coach",
        user_content="\n\n".join(sections),
        conversation_id=None,  # each coach call is its own conversation
        prompt=[{"role": "system", "content": agent.system_prompt}],
        subject_conversation_id=subject,
        stream=stream_flag(body),
    )


async def start_run(state: AppState, turn: Turn, *, user_id: str) -> Run:
    """Admit the turn (limits, then its budget reservation: 503, 429, 402 or 409 with nothing
    saved or sent), then start its run; the user message is saved while the upstream call starts.
    """
    # Resolved once here and copied into the run: a later change never reaches a reply in flight.
    agent = state.agents.effective(turn.agent)
    model = agent.effective_model(state.settings.default_model)
    ids = TurnIds.allocate(turn.conversation_id)
    request = RunRequest(
        message_id=ids.message_id,
        conversation_id=ids.conversation_id,
        user_message_id=ids.user_message_id,
        user_id=user_id,
        agent=turn.agent,
        model=model,
        fallback_models=agent.fallback_models,
        temperature=agent.temperature,
        max_tokens=agent.max_tokens,
        messages=[*turn.prompt, {"role": "user", "content": turn.user_content}],
        stream=turn.stream,
    )
    with state.limits.process_slot():
        await state.limits.count_turn(user_id)
        # Awaited before the upstream call, not alongside it: the reservation gates the call.
        await state.spend.reserve(request)
        save_turn = state.store.replies.start_turn(
            ids=ids,
            user_id=user_id,
            agent=turn.agent,
            title=" ".join(turn.user_content.split())[:TITLE_CHARS],
            user_content=turn.user_content,
            requested_model=model,
            temperature=agent.temperature,
            subject_conversation_id=turn.subject_conversation_id,
        )
        return state.runs.start(request, save_turn=save_turn)
