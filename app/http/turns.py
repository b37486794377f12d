"""Turning a caller's input into a run: validation, the conversation, the upstream prompt;
then admission (`app/admission/`) and the run.

Shared by the chat and coach routes and by their one-step (`POST /api/chat`) and two-step
(`POST /api/chat/messages`) forms, so every entry point validates the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from app.admission.service import Key, KeyUsed
from app.admission.turn_write import TurnWrite
from app.agents.models import ModelChoice, choose, requested_effort, requested_model
from app.core.attachments import (
    MAX_ATTACHMENTS,
    Attachment,
    attachments_of,
    in_messages,
    readable,
    text_of,
    with_attachments,
)
from app.core.outage import is_unavailable
from app.core.refusals import NotSaved
from app.core.run_request import RunRequest
from app.core.stages import Stage, mark
from app.errors import ApiError, database_away
from app.http.input import optional_text, stream_flag, valid_id
from app.http.state import AppState
from app.replies.breakpoints import with_breakpoints
from app.replies.fitting import fit
from app.replies.runs import Run
from app.replies.titles import first_words
from app.replies.window import windowed
from app.storage.replies import TurnIds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Turn:
    user_id: str  # the caller's: the owner of the conversation the turn opens or continues
    agent: str
    user_content: str
    conversation_id: str | None
    prompt: list[dict[str, Any]]  # what precedes the history: the system prompt
    choice: ModelChoice  # the model it goes to, and what that model takes
    # The most recent messages the turn may send before the user message, oldest first: as
    # many whole turns of them as fit the model's window go (app/replies/fitting.py).
    history: list[dict[str, Any]] = field(default_factory=list)
    # Whether last turn's history, and the next turn's, start where this one's does (the
    # window moves in steps: app/replies/window.py): where its prefix can be read and written.
    same_start_as_last: bool = False
    same_start_as_next: bool = False
    # The user message made of the history kept, when the history goes inside it (the coach's
    # transcript) rather than before it.
    render: Callable[[Sequence[dict[str, Any]]], str] | None = None
    subject_conversation_id: str | None = None
    stream: bool = True
    # Where the turn goes in the conversation's tree (see `app/storage/replies.py`): the
    # message its user message follows (the one the history ends with), and, for a
    # regenerated reply, the user message it answers again (`user_content` is then its text).
    parent_id: str | None = None
    answers: str | None = None
    # A chat whose title is still the question's first words: its reply, if complete, gets it
    # one (see `app/replies/titles.py`). A coach call's conversation is never listed, so
    # titling it would be money for nothing.
    wants_title: bool = False
    # The uploads its user message carries (app/core/attachments.py), in order.
    attachments: tuple[Attachment, ...] = ()

    def compose(self, kept: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The upstream messages, given the history `kept`."""
        if self.render is not None:
            content = with_attachments(self.render(kept), self.attachments)
            return [*self.prompt, {"role": "user", "content": content}]
        content = with_attachments(self.user_content, self.attachments)
        return [*self.prompt, *kept, {"role": "user", "content": content}]


async def _choice(
    state: AppState, agent: str, body: dict[str, Any], *, remembered: str | None = None
) -> ModelChoice:
    """The model a turn of `agent` goes to: the body's `model` and `reasoning`, else the
    conversation's model (`remembered`), else the agent's; refused (422 model_not_allowed,
    unknown_model, reasoning_not_supported) before anything is read or written."""
    requested = requested_model(body.get("model"))
    effort = requested_effort(body.get("reasoning"))
    return choose(
        state.agents.effective(agent),
        default_model=state.settings.default_model,
        catalog=await state.models.get(),
        requested=requested,
        remembered=remembered,
        effort=effort,
    )


def _attachment_ids(body: dict[str, Any]) -> list[str] | None:
    """The body's `attachments`: a list of upload ids (a query string's: comma-separated);
    None when it names none."""
    value = body.get("attachments")
    if value is None:
        return None
    if isinstance(value, str):  # ?attachments=id,id on the EventSource forms
        value = [part for part in value.split(",") if part]
    if not isinstance(value, list) or len(value) > MAX_ATTACHMENTS:
        raise ApiError(
            422,
            "invalid_field",
            f"`attachments` must be a list of at most {MAX_ATTACHMENTS} upload ids",
        )
    ids = [valid_id(item, "attachments") for item in value]
    if len(set(ids)) != len(ids):
        raise ApiError(422, "invalid_field", "`attachments` names an upload twice")
    return ids


async def _attachments(
    state: AppState, ids: Sequence[str], *, user_id: str, choice: ModelChoice
) -> tuple[Attachment, ...]:
    """The caller's uploads `ids`, in order: 404 upload_not_found for one that is not theirs
    (or not there), 422 when the turn's model cannot read one; before anything is written."""
    if not ids:
        return ()
    found = await state.store.uploads.owned(upload_ids=ids, user_id=user_id)
    missing = next((i for i in ids if i not in found), None)
    if missing is not None:
        raise ApiError(404, "upload_not_found", f"no upload {missing!r}")
    attachments = tuple(Attachment.from_json(found[i]) for i in ids)
    reads = choice.capabilities
    if reads is not None:
        if "image_input" not in reads and any(a.is_image for a in attachments):
            raise ApiError(
                422,
                "model_cannot_read_images",
                f"{choice.model} does not read images: choose a model whose capabilities "
                "list image input (GET /api/agents/{agent}/models), or send the text alone",
                details={"model": choice.model},
            )
        if not _reads_files(state, choice) and any(not a.is_image for a in attachments):
            raise ApiError(
                422,
                "model_cannot_read_files",
                f"{choice.model} does not read PDFs and no PDF parser is set (PDF_ENGINE): "
                "choose a model whose capabilities list file input",
                details={"model": choice.model},
            )
    return attachments


def _reads_files(state: AppState, choice: ModelChoice) -> bool:
    """Whether the turn's model gets PDFs read: by itself, or through OpenRouter's parser."""
    native = choice.capabilities is None or "file_input" in choice.capabilities
    return native or state.settings.pdf_engine != "off"


def _readable(
    state: AppState, history: list[dict[str, Any]], choice: ModelChoice
) -> list[dict[str, Any]]:
    """The history with what the model cannot read of earlier turns' attachments named in
    text instead (a model chosen later need not read an earlier turn's image)."""
    images = choice.capabilities is None or "image_input" in choice.capabilities
    files = _reads_files(state, choice)
    if images and files:
        return history
    return [readable(message, images=images, files=files) for message in history]


async def _existing_conversation(
    state: AppState, conversation_id: Any, *, agent: str, user_id: str
) -> dict[str, Any]:
    """The user's own conversation of `agent` (admins included: a turn never goes into, and
    the coach never reviews, another user's conversation)."""
    valid_id(conversation_id, "conversation_id")
    conversation = await state.store.conversations.get(
        conversation_id=conversation_id, user_id=user_id
    )
    if conversation is None or conversation["agent"] != agent:
        raise ApiError(
            404, "conversation_not_found", f"no {agent} conversation {conversation_id!r}"
        )
    return conversation


async def chat_turn(state: AppState, body: dict[str, Any], *, user_id: str) -> Turn:
    limit = state.settings.max_message_chars
    message = optional_text(body, "message", limit=limit)
    if message is None:
        raise ApiError(422, "message_required", "`message` is required and must not be empty")
    stream = stream_flag(body)
    conversation_id = leaf = remembered = None
    if body.get("conversation_id") is not None:
        conversation = await _existing_conversation(
            state, body["conversation_id"], agent="chat", user_id=user_id
        )
        # The turn continues the branch the conversation shows, from its last message.
        conversation_id, leaf = conversation["id"], conversation["active_leaf_id"]
        remembered = conversation["model"]
    return await _turn_after(
        state,
        "chat",
        leaf,
        body=body,
        remembered=remembered,
        attachment_ids=_attachment_ids(body) or [],
        user_id=user_id,
        user_content=message,
        conversation_id=conversation_id,
        stream=stream,
        wants_title=conversation_id is None or not conversation["titled"],
    )


async def _turn_after(
    state: AppState,
    agent: str,
    parent_id: str | None,
    *,
    body: dict[str, Any],
    remembered: str | None,
    attachment_ids: Sequence[str],
    user_id: str,
    user_content: str,
    conversation_id: str | None,
    stream: bool = True,
    answers: str | None = None,
    wants_title: bool,
) -> Turn:
    """A turn of `agent` whose user message follows `parent_id` (None: a new conversation's
    first): the agent's system prompt, the model `body` chooses (else `remembered`, else the
    agent's), the uploads `attachment_ids` names (the caller's, readable by that model), and
    the history that ends at `parent_id`: the agent's last `history_messages` at most, read no
    further up than the model's window, left out in steps (app/replies/window.py)."""
    effective = state.agents.effective(agent)
    choice = await _choice(state, agent, body, remembered=remembered)
    attachments = await _attachments(state, attachment_ids, user_id=user_id, choice=choice)
    limit = effective.history_messages
    rows = await state.store.replies.history_with_seqs(
        leaf_id=parent_id, limit=limit, max_chars=choice.context_length
    )
    window = windowed(rows, limit=limit)
    return Turn(
        user_id=user_id,
        agent=agent,
        user_content=user_content,
        conversation_id=conversation_id,
        prompt=[{"role": "system", "content": effective.system_prompt}],
        choice=choice,
        attachments=attachments,
        history=_readable(state, window.messages, choice),
        same_start_as_last=window.same_as_last,
        same_start_as_next=window.same_as_next,
        stream=stream,
        parent_id=parent_id,
        answers=answers,
        wants_title=wants_title,
    )


async def _own_message(
    state: AppState, message_id: str, *, role: str, user_id: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The caller's own message of `role` and its conversation; else 404, the same for another
    user's message as for none."""
    message = await state.store.replies.message(message_id=message_id)
    conversation = (
        await state.store.conversations.get(
            conversation_id=message["conversation_id"], user_id=user_id
        )
        if message is not None and message["role"] == role
        else None
    )
    if message is None or conversation is None:
        raise ApiError(404, "message_not_found", f"no {role} message {message_id!r}")
    return message, conversation


async def _branch_turn(
    state: AppState,
    conversation: dict[str, Any],
    *,
    parent_id: str | None,
    user_content: str,
    body: dict[str, Any],
    attachment_ids: Sequence[str],
    answers: str | None = None,
) -> Turn:
    """A turn on a new branch of `conversation`, after `parent_id`: the history is that
    message's path, whichever branch the conversation shows. `attachment_ids`: the uploads its
    user message carries (the one it answers again, or the edited one's, or the edit's own)."""
    return await _turn_after(
        state,
        conversation["agent"],
        parent_id,
        body=body,
        remembered=conversation["model"],
        attachment_ids=attachment_ids,
        user_id=conversation["user_id"],
        user_content=user_content,
        conversation_id=conversation["id"],
        answers=answers,
        wants_title=conversation["agent"] == "chat" and not conversation["titled"],
    )


async def regenerate_turn(
    state: AppState, message_id: str, body: dict[str, Any], *, user_id: str
) -> Turn:
    """Another reply to the user message that reply `message_id` answered, beside it (with
    the body's `model`, if it names one: "regenerate with another model")."""
    reply, conversation = await _own_message(state, message_id, role="assistant", user_id=user_id)
    asked = await state.store.replies.message(message_id=reply["parent_id"])
    assert asked is not None  # a reply always follows its user message
    return await _branch_turn(
        state,
        conversation,
        parent_id=asked["parent_id"],
        user_content=asked["content"],
        body=body,
        attachment_ids=await _carried(state, asked["id"]),
        answers=asked["id"],
    )


async def _carried(state: AppState, message_id: str) -> list[str]:
    """The ids of the uploads a user message carries, in order."""
    found = await state.store.uploads.of_messages(message_ids=[message_id])
    return [upload["id"] for upload in found.get(message_id, ())]


async def edit_turn(
    state: AppState, message_id: str, body: dict[str, Any], *, user_id: str
) -> Turn:
    """User message `message_id` said otherwise: a new user message beside it, and its reply."""
    message = optional_text(body, "message", limit=state.settings.max_message_chars)
    if message is None:
        raise ApiError(422, "message_required", "`message` is required and must not be empty")
    edited, conversation = await _own_message(state, message_id, role="user", user_id=user_id)
    # The edit keeps the message's attachments, unless it names its own (`[]`: none).
    ids = _attachment_ids(body)
    return await _branch_turn(
        state,
        conversation,
        parent_id=edited["parent_id"],
        user_content=message,
        body=body,
        attachment_ids=await _carried(state, edited["id"]) if ids is None else ids,
    )


async def coach_turn(state: AppState, body: dict[str, Any], *, user_id: str) -> Turn:
    limit = state.settings.max_message_chars
    context = optional_text(body, "context", limit=limit)
    question = optional_text(body, "question", limit=limit)
    stream = stream_flag(body)
    subject: Any = None
    transcript: list[dict[str, Any]] = []
    agent = state.agents.effective("coach")
    choice = await _choice(state, "coach", body)
    # The document to coach on, as an upload (a PDF; an image too), beside or instead of
    # `context`'s text.
    attachments = await _attachments(
        state, _attachment_ids(body) or [], user_id=user_id, choice=choice
    )
    if body.get("conversation_id") is not None:
        subject = await _existing_conversation(
            state, body["conversation_id"], agent="chat", user_id=user_id
        )
        # What the conversation shows: the branch the person is looking at.
        transcript = await state.store.replies.history(
            leaf_id=subject["active_leaf_id"],
            limit=agent.history_messages,
            max_chars=choice.context_length,
        )
        subject = subject["id"]
    if context is None and question is None and subject is None and not attachments:
        raise ApiError(
            422,
            "coach_input_required",
            "give at least one of `context`, `question`, `conversation_id`, `attachments`",
        )
    render = partial(_coach_message, context=context, question=question)
    return Turn(
        user_id=user_id,
        agent="coach",
        user_content=render(transcript),
        conversation_id=None,  # each coach call is its own conversation
        prompt=[{"role": "system", "content": agent.system_prompt}],
        choice=choice,
        history=transcript,
        render=render,
        subject_conversation_id=subject,
        stream=stream,
        attachments=attachments,
    )


def _coach_message(
    transcript: Sequence[dict[str, Any]], *, context: str | None, question: str | None
) -> str:
    """The coach's user message: the part of the reviewed conversation that fits, the context,
    the question."""
    sections = []
    if transcript:
        # The reviewed conversation's text; its attachments by name (they are its, not the
        # coach call's: the coach reads the words).
        lines = "\n".join(f"{m['role'].capitalize()}: {_line(m)}" for m in transcript)
        sections.append(f"Conversation to review:\n{lines}")
    if context:
        sections.append(f"Context:\n{context}")
    sections.append(f"Question:\n{question}" if question else "What advice do you have?")
    return "\n\n".join(sections)


def _line(message: dict[str, Any]) -> str:
    names = [f"[attached: {a.name}]" for a in attachments_of(message)]
    return " ".join([text_of(message["content"]), *names])


def _prepare(state: AppState, turn: Turn) -> tuple[RunRequest, dict[str, Any]]:
    """The run's request and the arguments of `Replies.start_turn` for its rows."""
    # Resolved once here and copied into the run: a later change never reaches a reply in flight.
    agent = state.agents.effective(turn.agent)
    choice = turn.choice
    request, note = fit(
        _request(turn, agent.temperature, choice),
        turn.history,
        window=choice.context_length,
        compose=turn.compose,
    )
    # The coach's: with the transcript that fitted.
    sent = text_of(request.messages[-1]["content"])
    if (
        choice.capabilities is not None
        and "file_input" not in choice.capabilities
        and state.settings.pdf_engine != "off"
        and any(not a.is_image for a in in_messages(request.messages))
    ):
        # PDFs for a model that does not read files: OpenRouter's parser reads them for it.
        request = replace(request, pdf_engine=state.settings.pdf_engine)
    if choice.breakpoints:
        # On what is sent, once. The prefix is read where last turn sent the same history
        # start, and written where the next turn will: nothing left out to fit the model's
        # window (that start moves every turn). A coach call is never sent again.
        stable = turn.render is None and note is None
        request = replace(
            request,
            messages=with_breakpoints(
                request.messages,
                reads=stable and turn.same_start_as_last,
                writes=stable and turn.same_start_as_next,
            ),
        )
    ids = TurnIds.allocate(
        turn.conversation_id, parent_id=turn.parent_id, user_message_id=turn.answers
    )
    rows = {
        "ids": ids,
        "user_id": turn.user_id,
        "agent": turn.agent,
        "title": first_words(sent),
        "user_content": None if turn.answers else sent,
        "requested_model": choice.model,
        "temperature": agent.temperature,
        "subject_conversation_id": turn.subject_conversation_id,
        "history": None if note is None else note.to_json(),
        "attachments": [a.id for a in turn.attachments] if not turn.answers else [],
    }
    request = replace(
        request,
        message_id=ids.message_id,
        conversation_id=ids.conversation_id,
        user_message_id=ids.user_message_id,
        wants_title=turn.wants_title,
        history=rows["history"],
        cache_prices=choice.cache_prices,
    )
    return request, rows


def _request(turn: Turn, temperature: float, choice: ModelChoice) -> RunRequest:
    """The turn's upstream request without history (its ids are given once it fits)."""
    return RunRequest(
        message_id="",
        conversation_id="",
        user_message_id="",
        user_id=turn.user_id,
        agent=turn.agent,
        model=choice.model,
        fallback_models=choice.fallback_models,
        temperature=temperature,
        max_tokens=choice.max_tokens,
        messages=turn.compose([]),
        stream=turn.stream,
        reasoning=choice.reasoning,
    )


async def start(state: AppState, turn: Turn, *, key: Key | None = None) -> Run | KeyUsed:
    """Admit the turn (`state.admission`: a refusal raised, with nothing saved or sent), then
    start its run; or, if `key` named a turn already, that turn's ids."""
    request, rows = _prepare(state, turn)
    admitted = await state.admission.admit(request, rows, key=key)
    if isinstance(admitted, KeyUsed):
        return admitted
    # No await since `admit` returned: the run is counted live before the next turn's check.
    run = state.runs.start(admitted.request, turn=admitted.write)
    mark(Stage.STARTED)
    await _saved(admitted.write)
    return run


async def _saved(write: TurnWrite) -> None:
    """Once the turn is written (its run's `meta` event waits for that anyway): a turn the
    database could not take is the caller's 503 (database_unavailable, with Retry-After, while
    the database is away), not a stream that ends in `storage_error`."""
    if await write.written():
        return
    if (failure := write.failure) is not None and is_unavailable(failure):
        raise database_away()
    raise NotSaved("the conversation could not be saved")
